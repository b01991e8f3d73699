/* Studio History: the selection of jobs for batch actions (issue 5).
 *
 * The selection is a set of prompt ids, not of DOM nodes: a poll, a websocket refresh, a filter change or
 * a further page may replace or morph the cards, and after each of those (studio:list-updated, fired by
 * history.js) the checkboxes are set again from the set. A job whose card is no longer in the list leaves
 * the selection, so nothing that cannot be seen is ever deleted.
 *
 * - a checkbox click toggles one job and sets the range anchor;
 * - Ctrl/Cmd+click on a card toggles it without opening the overlay (history.js leaves modified clicks alone);
 * - Shift+click on a checkbox or a card sets every card from the anchor to it (inclusive, screen order)
 *   to the clicked one's new state;
 * - "Select all" toggles every visible selectable job and shows the mixed state when some are selected.
 *
 * Only completed, error and stalled jobs have a checkbox (input.job-select), so only they are selectable.
 * Every listener is delegated on document. API: window.StudioHistory.selection (see the end of the file)
 * and window.StudioHistory.announce(text) for the aria-live region; fires studio:selection-changed.
 */
(function () {
  "use strict";

  var app = document.getElementById("history-app");
  if (!app) return;

  var api = (window.StudioHistory = window.StudioHistory || {});
  var selected = new Set();
  var anchorId = null;
  var lastCount = -1;

  function boxes() {
    return Array.prototype.slice.call(document.querySelectorAll("#job-list .job-card input.job-select"));
  }

  function boxOf(card) {
    return card ? card.querySelector("input.job-select") : null;
  }

  function visibleIds() {
    return boxes().map(function (box) {
      return box.value;
    });
  }

  // ---- the aria-live region -------------------------------------------------------------------------
  var announceTimer = null;
  function announce(text) {
    var region = document.getElementById("action-status");
    if (!region) return;
    // Empty it first, so the same words said twice are announced twice.
    region.textContent = "";
    clearTimeout(announceTimer);
    announceTimer = setTimeout(function () {
      region.textContent = text;
    }, 60);
  }
  api.announce = announce;

  // ---- the model ----------------------------------------------------------------------------------
  function setSelected(promptId, on) {
    if (on) selected.add(promptId);
    else selected.delete(promptId);
  }

  // Drop ids whose cards are gone; keep the rest.
  function reconcile() {
    var present = new Set(visibleIds());
    selected.forEach(function (promptId) {
      if (!present.has(promptId)) selected.delete(promptId);
    });
    if (anchorId && !present.has(anchorId)) anchorId = null;
  }

  // Make the checkboxes, "Select all", the count and the toolbar's buttons show the set.
  function render() {
    var all = boxes();
    var count = 0;
    all.forEach(function (box) {
      var on = selected.has(box.value);
      if (box.checked !== on) box.checked = on;
      if (on) count += 1;
    });
    var selectAll = document.getElementById("select-all");
    if (selectAll) {
      var allOn = all.length > 0 && count === all.length;
      var mixed = count > 0 && count < all.length;
      if (selectAll.checked !== allOn) selectAll.checked = allOn;
      if (selectAll.indeterminate !== mixed) selectAll.indeterminate = mixed;
      if (selectAll.disabled !== (all.length === 0)) selectAll.disabled = all.length === 0;
    }
    var counter = document.getElementById("selected-count");
    var text = count + " selected";
    if (counter && counter.textContent !== text) counter.textContent = text;
    ["delete-selected", "export-selected"].forEach(function (id) {
      var button = document.getElementById(id);
      if (button && button.hidden !== (count === 0)) button.hidden = count === 0;
    });
    if (count !== lastCount) {
      lastCount = count;
      document.dispatchEvent(new CustomEvent("studio:selection-changed", { detail: { count: count } }));
    }
  }

  // Set every job from the anchor to ``promptId`` (inclusive, in screen order) to ``on``.
  function selectRange(fromId, toId, on) {
    var ids = visibleIds();
    var from = ids.indexOf(fromId);
    var to = ids.indexOf(toId);
    if (from === -1 || to === -1) {
      setSelected(toId, on);
      return;
    }
    var low = Math.min(from, to);
    var high = Math.max(from, to);
    for (var index = low; index <= high; index += 1) setSelected(ids[index], on);
  }

  // A click (or Space) on a card's checkbox: the box has already changed.
  function checkboxClicked(box, shiftKey) {
    var promptId = box.value;
    if (shiftKey && anchorId && anchorId !== promptId) {
      selectRange(anchorId, promptId, box.checked);
    } else {
      setSelected(promptId, box.checked);
    }
    anchorId = promptId;
    render();
  }

  document.addEventListener("click", function (event) {
    var target = event.target;
    if (!target || !target.closest) return;

    if (target.id === "select-all") {
      var on = target.checked;
      if (on) {
        visibleIds().forEach(function (promptId) {
          selected.add(promptId);
        });
      } else {
        selected.clear();
      }
      render();
      announce(on ? selected.size + " jobs selected" : "Selection cleared");
      return;
    }

    var box = target.closest("#job-list .job-card input.job-select");
    if (box) {
      checkboxClicked(box, event.shiftKey);
      return;
    }

    // Ctrl/Cmd+click or Shift+click on a card (not on its buttons or form controls): select, don't open.
    var card = target.closest("#job-list .job-card");
    if (!card || event.button !== 0) return;
    var toggle = event.ctrlKey || event.metaKey;
    if (!toggle && !event.shiftKey) return;
    if (target.closest("button, input, select, textarea, label")) return;
    var cardBox = boxOf(card);
    if (!cardBox) return;
    event.preventDefault(); // no new tab or window from the card's link
    var promptId = cardBox.value;
    if (event.shiftKey && !toggle && anchorId && anchorId !== promptId) {
      selectRange(anchorId, promptId, true);
    } else {
      setSelected(promptId, !selected.has(promptId));
    }
    anchorId = promptId;
    render();
  });

  // Shift+click on a card would also select its text: not while it is selecting jobs.
  document.addEventListener("mousedown", function (event) {
    if (!event.shiftKey || !event.target.closest) return;
    var card = event.target.closest("#job-list .job-card");
    if (card && !event.target.closest("input, button, select, textarea") && boxOf(card)) event.preventDefault();
  });

  document.addEventListener("studio:list-updated", function () {
    reconcile();
    render();
  });

  // A page restored by the browser may come back with boxes checked: they are the selection.
  boxes().forEach(function (box) {
    if (box.checked) selected.add(box.value);
  });
  render();

  api.selection = {
    /** The selected ids, in screen order. */
    ids: function () {
      return visibleIds().filter(function (promptId) {
        return selected.has(promptId);
      });
    },
    count: function () {
      return selected.size;
    },
    has: function (promptId) {
      return selected.has(promptId);
    },
    /** Select or deselect one job (only a visible, selectable one can be selected). */
    set: function (promptId, on) {
      if (on && visibleIds().indexOf(promptId) === -1) return;
      setSelected(promptId, on);
      render();
    },
  };
})();

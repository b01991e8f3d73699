/* Studio History: selecting jobs. The selection is the checked boxes of form#job-selection (the cards'
 * prompt_ids): the DOM holds it, a morph keeps a box the reader checked, the toolbar's buttons post it. This
 * adds what only a browser knows: Shift+click ranges, Ctrl/Cmd+click on a card, Select all and its mixed
 * state, the count, and keys (j/k or arrows move, x/Space select, Enter opens, Delete asks to delete); keys
 * in a field, with Ctrl/Alt/Cmd or under a modal dialog are left alone. */
(function () {
  "use strict";

  if (!document.getElementById("history-app")) return;
  var anchorId = null; // where a Shift range starts: the last card clicked

  function boxes() {
    return Array.prototype.slice.call(document.querySelectorAll("#job-list .job-card input.job-select"));
  }

  // Make "Select all" and the count show the checked boxes.
  function render() {
    var all = boxes();
    var count = all.filter(function (box) { return box.checked; }).length;
    var shown = { checked: all.length > 0 && count === all.length, indeterminate: count > 0 && count < all.length, disabled: !all.length };
    var selectAll = document.getElementById("select-all");
    var counter = document.getElementById("selected-count");
    Object.keys(shown).forEach(function (name) { if (selectAll[name] !== shown[name]) selectAll[name] = shown[name]; });
    if (counter.textContent !== count + " selected") counter.textContent = count + " selected"; // an idle poll changes nothing
    var compare = document.getElementById("compare-selected");
    if (compare && compare.hidden !== (count !== 2)) compare.hidden = count !== 2; // Compare takes exactly two
  }

  // Set every box from the anchor to ``box`` (inclusive, in screen order) to ``on``.
  function setRange(box, on) {
    var all = boxes();
    var from = all.findIndex(function (other) { return other.value === anchorId; });
    var to = all.indexOf(box);
    if (from === -1) from = to;
    all.slice(Math.min(from, to), Math.max(from, to) + 1).forEach(function (other) { other.checked = on; });
  }

  document.addEventListener("click", function (event) {
    var target = event.target;
    if (target.id === "select-all") {
      boxes().forEach(function (box) { box.checked = target.checked; });
      render();
      document.getElementById("action-status").textContent = target.checked ? boxes().length + " jobs selected" : "Selection cleared";
      return;
    }
    var box = target.closest("#job-list .job-card input.job-select");
    var card = target.closest("#job-list .job-card");
    if (box) {
      if (event.shiftKey && anchorId) setRange(box, box.checked);
    } else {
      // Ctrl/Cmd+click or Shift+click on a card (not on its controls): select it, don't open it.
      var toggle = event.ctrlKey || event.metaKey;
      box = card && card.querySelector("input.job-select");
      if (!box || event.button !== 0 || !(toggle || event.shiftKey) || target.closest("button, input, select, textarea, label")) return;
      event.preventDefault(); // no overlay, and no new tab from the card's link
      if (event.shiftKey && !toggle && anchorId) setRange(box, true);
      else box.checked = !box.checked;
    }
    anchorId = box.value;
    render();
  });

  // Shift+click on a card would also select its text: not while it is selecting jobs.
  document.addEventListener("mousedown", function (event) {
    var card = event.shiftKey && event.target.closest("#job-list .job-card");
    if (card && card.querySelector("input.job-select") && !event.target.closest("input, button, select, textarea")) event.preventDefault();
  });

  document.addEventListener("htmx:after:swap", render);
  render(); // a page restored by the browser may come back with boxes checked

  function isTyping(element) {
    if (element.isContentEditable || element.closest("textarea, select")) return true;
    var input = element.closest("input");
    return !!input && ["checkbox", "radio", "button", "submit", "reset"].indexOf(input.type) === -1;
  }

  function move(step, current) {
    var cards = Array.prototype.slice.call(document.querySelectorAll("#job-list .job-card"));
    if (!cards.length) return;
    var index = current ? cards.indexOf(current) + step : step > 0 ? 0 : cards.length - 1;
    var card = cards[Math.max(0, Math.min(cards.length - 1, index))];
    (card.querySelector("input.job-select") || card.querySelector(".job-open")).focus({ preventScroll: true });
    card.scrollIntoView({ block: "nearest" });
  }

  document.addEventListener("keydown", function (event) {
    if (event.defaultPrevented || event.ctrlKey || event.metaKey || event.altKey) return;
    if (document.querySelector("dialog:modal") || isTyping(event.target)) return;
    var active = document.activeElement || document.body;
    var card = active.closest("#job-list .job-card");
    var key = event.key;
    var onBody = active === document.body || active === document.documentElement;
    if (key === "j" || key === "k" || ((key === "ArrowDown" || key === "ArrowUp") && (card || onBody))) {
      event.preventDefault();
      return move(key === "j" || key === "ArrowDown" ? 1 : -1, card);
    }
    if (key === "Delete" && document.querySelector("#job-list input.job-select:checked, #matching-selection input")) {
      event.preventDefault();
      return document.getElementById("delete-selected").click(); // the server's confirm dialog, as a click asks
    }
    if (!card) return;
    var box = card.querySelector("input.job-select");
    if (key === "x" || (key === " " && active.tagName !== "BUTTON" && active !== box)) {
      event.preventDefault(); // Space on the checkbox or a button does what it always does
      if (box) box.click();
    } else if (key === "Enter" && active.tagName !== "BUTTON" && active.tagName !== "A") {
      event.preventDefault();
      card.querySelector(".job-open").click();
    }
  });
})();

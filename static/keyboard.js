/* Studio History: the page with a keyboard alone (issue 5).
 *
 *   j / ArrowDown, k / ArrowUp   move the focus to the next / previous card (its checkbox, or its link)
 *   x / Space                    select or deselect the focused card
 *   Enter                        open the focused card's details
 *   Esc                          close the details (the overlay's own <dialog> cancel, in history.js)
 *   Delete                       ask to delete the selected jobs (the confirm dialog of actions.js)
 *
 * Keys typed into a field, or with Ctrl/Alt/Cmd, are left alone, and so is everything while a modal
 * dialog is open (the dialog handles its own keys). The focus lives on controls the server renders, so a
 * list swap (which morphs cards and keeps their nodes) keeps it. One delegated listener on document.
 */
(function () {
  "use strict";

  var app = document.getElementById("history-app");
  if (!app) return;
  var api = (window.StudioHistory = window.StudioHistory || {});

  function cards() {
    return Array.prototype.slice.call(document.querySelectorAll("#job-list .job-card"));
  }

  function focusTarget(card) {
    return card.querySelector("input.job-select") || card.querySelector(".job-open");
  }

  function isTyping(element) {
    if (!element || !element.closest) return false;
    if (element.isContentEditable) return true;
    if (element.closest("textarea, select")) return true;
    var input = element.closest("input");
    return !!input && ["checkbox", "radio", "button", "submit", "reset"].indexOf(input.type) === -1;
  }

  function modalOpen() {
    try {
      return !!document.querySelector("dialog:modal");
    } catch (error) {
      return !!document.querySelector("dialog[open]");
    }
  }

  function move(step) {
    var all = cards();
    if (!all.length) return;
    var current = document.activeElement && document.activeElement.closest
      ? document.activeElement.closest("#job-list .job-card")
      : null;
    var index = current ? all.indexOf(current) + step : step > 0 ? 0 : all.length - 1;
    index = Math.max(0, Math.min(all.length - 1, index));
    var target = focusTarget(all[index]);
    if (!target) return;
    target.focus({ preventScroll: true });
    all[index].scrollIntoView({ block: "nearest" });
  }

  document.addEventListener("keydown", function (event) {
    if (event.defaultPrevented || event.ctrlKey || event.metaKey || event.altKey) return;
    if (modalOpen() || isTyping(event.target)) return;
    var active = document.activeElement;
    var card = active && active.closest ? active.closest("#job-list .job-card") : null;
    var onBody = !active || active === document.body || active === document.documentElement;
    var key = event.key;

    if (key === "j" || key === "k" || ((key === "ArrowDown" || key === "ArrowUp") && (card || onBody))) {
      event.preventDefault();
      move(key === "j" || key === "ArrowDown" ? 1 : -1);
      return;
    }
    if (key === "Delete" && api.actions && api.selection && api.selection.count() > 0) {
      event.preventDefault();
      api.actions.askDelete();
      return;
    }
    if (!card) return;
    var box = card.querySelector("input.job-select");
    var onControl = active.closest("button, a, input");
    if (key === "x" || (key === " " && !(onControl && (active.tagName === "BUTTON" || active === box)))) {
      // Space on the checkbox or a button does what it always does; elsewhere in a card it selects.
      event.preventDefault();
      if (box) box.click(); // selection.js sees the click, like a mouse's
      return;
    }
    if (key === "Enter" && !(active.tagName === "BUTTON" || active.tagName === "A")) {
      var link = card.querySelector(".job-open");
      if (link) {
        event.preventDefault();
        link.click();
      }
    }
  });
})();

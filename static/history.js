/* Studio History: what only a browser can do around htmx and the server's HTML on the History page.
 * The LIVE countdown, pausing while hidden, websocket refreshes, the reader's time zone (a cookie: the server
 * renders local times), filters in the address bar, modal dialogs with their URL and focus, copy buttons, the
 * input image viewer, a button's busy text, status changes said aloud. Every listener is delegated on document
 * and driven by data- attributes; nothing here holds server state, and every action works without this file. */
(function () {
  "use strict";

  var app = document.getElementById("history-app");
  if (!app || !window.htmx) return;
  var pageUrl = app.dataset.pageUrl;
  var indicator = document.getElementById("live-indicator");
  var byId = document.getElementById.bind(document);

  var refreshTimer = null;
  function refreshSoon() { // coalesces a burst of events (a batch delete publishes one per job) into one request
    clearTimeout(refreshTimer);
    refreshTimer = setTimeout(function () { if (byId("job-list").hasAttribute("hx-get")) htmx.trigger("#job-list", "studio:refresh"); }, 30);
  }

  // The reader's time zone: set the cookie, then refresh once htmx has wired the list (after DOMContentLoaded).
  var zone = Intl.DateTimeFormat().resolvedOptions().timeZone || "";
  if (/^[A-Za-z0-9_+\/-]{1,60}$/.test(zone) && app.dataset.tz !== zone) {
    document.cookie = "studio_tz=" + zone + "; path=/; max-age=31536000; SameSite=Lax";
    if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", refreshSoon);
    else refreshSoon();
  }

  // ---- live refresh ---------------------------------------------------------------------------------
  function restartCountdown() {
    indicator.classList.remove("is-counting");
    void indicator.offsetWidth; // restarts the CSS animation
    indicator.classList.add("is-counting");
  }

  if (indicator) {
    // The page's CSP allows no inline style attributes: the interval reaches the CSS from here.
    indicator.style.setProperty("--poll-seconds", (parseFloat(indicator.dataset.pollSeconds) || 5) + "s");
    indicator.addEventListener("click", function () {
      var list = byId("job-list");
      if (!list || !list.hasAttribute("hx-get")) return;
      htmx.process(list, true); // restarts the interval, so the countdown and the next poll agree
      htmx.trigger(list, "studio:refresh");
    });
    restartCountdown();
    indicator.classList.toggle("is-paused", document.hidden);
    document.addEventListener("visibilitychange", function () {
      indicator.classList.toggle("is-paused", document.hidden);
      if (!document.hidden) indicator.click();
    });
  }

  document.addEventListener("htmx:config:request", function (event) {
    var ctx = event.detail.ctx;
    // Polling pauses while the tab is hidden (a trigger filter would need 'unsafe-eval', which the CSP refuses).
    if (event.target.id === "job-list" && document.hidden && ctx.sourceEvent && ctx.sourceEvent.type === "every") return event.preventDefault();
    // Once further pages are kept, what refreshes the list asks for everything above where they start.
    var more = byId("job-list-more");
    if (event.target.matches("[data-keeps-pages]") && more && more.hasAttribute("hx-morph-skip") && more.dataset.since) {
      var url = new URL(ctx.request.action, location.href);
      url.searchParams.set("since", more.dataset.since);
      ctx.request.action = url.pathname + url.search;
    }
  });

  document.addEventListener("htmx:before:request", function (event) {
    if (event.target.id === "job-list" && indicator) restartCountdown();
    event.target.querySelectorAll("[data-busy-text]").forEach(function (button) {
      button.dataset.idleText = button.textContent; // a button's busy text while its form is on its way
      button.textContent = button.dataset.busyText;
    });
  });

  document.addEventListener("htmx:finally:request", function (event) {
    event.target.querySelectorAll("[data-idle-text]").forEach(function (button) { button.textContent = button.dataset.idleText; });
  });

  // What a failed answer (an HTTP status, or 0 when nothing answered) means for the LIVE pill, a page, a dialog or a card that did not open.
  function answered(event, status) {
    var source = event.target;
    var words = status ? "HTTP " + status : "no answer";
    if (source.id === "job-list" && indicator) {
      var text = status === null ? "" : status ? "Refresh failed (HTTP " + status + "), retrying" : "Offline, retrying";
      indicator.classList.toggle("is-failing", !!text);
      if (indicator.querySelector(".live-status").textContent !== text) indicator.querySelector(".live-status").textContent = text;
    }
    if (source.classList.contains("list-sentinel")) source.classList.toggle("is-failed", status !== null);
    var alert = status !== null && source.closest("dialog") && source.closest("dialog").querySelector("[role=alert]");
    if (alert) alert.textContent = "It did not go through (" + words + "); refresh to see what changed.";
    var failed = source.classList.contains("job-open") && (source.parentNode.querySelector(".open-failed") || status !== null && source.insertAdjacentElement("afterend", document.createElement("span")));
    if (failed) failed.outerHTML = status === null ? "" : '<span class="open-failed" role="alert">could not open this job (' + words + "); try again</span>";
  }
  document.addEventListener("htmx:after:request", function (event) {
    var status = event.detail.ctx.response ? event.detail.ctx.response.status : 0;
    answered(event, status >= 400 ? status : null);
  });
  document.addEventListener("htmx:error", function (event) {
    if (!event.detail.ctx || !event.detail.ctx.response) answered(event, 0);
  });

  function statuses() { // the cards' statuses before a list swap, compared after it: status changes said aloud
    return Array.from(document.querySelectorAll("#job-list .job-card")).reduce(function (seen, card) { seen[card.dataset.promptId] = card.dataset.status; return seen; }, {});
  }

  document.addEventListener("htmx:before:swap", function (event) {
    var ctx = event.detail.ctx;
    var source = ctx.sourceElement;
    ctx.studioPage = !!(source && source.classList.contains("list-sentinel"));
    if (ctx.target && ctx.target.id === "job-list" && !(source && source.id === "history-filters")) ctx.studioBefore = statuses();
  });

  document.addEventListener("htmx:after:swap", function (event) {
    var ctx = event.detail.ctx;
    var source = ctx.sourceElement;
    var more = byId("job-list-more");
    // Further pages are kept from then on: the poll's morph skips their container.
    if (ctx.studioPage && more && more.querySelector(".job-card")) more.setAttribute("hx-morph-skip", "");
    if (source && source.id === "history-filters") filtersToUrl(source);
    if (ctx.studioBefore && ctx.swap !== "none") {
      var before = ctx.studioBefore;
      var now = statuses();
      var added = Object.keys(now).filter(function (id) { return !(id in before); });
      var changed = Object.keys(now).filter(function (id) { return id in before && before[id] !== now[id]; });
      var parts = added.length && added.length <= 5 ? ["New: " + added.map(function (id) { return id.slice(0, 12) + " " + now[id]; }).join(", ")] : [];
      if (changed.length) parts.push(changed.map(function (id) { return id.slice(0, 12) + " is now " + now[id]; }).join(", "));
      if (parts.length) byId("action-status").textContent = "Jobs: " + parts.join(". ");
    }
    upgradeDialogs();
    // A delete's answer closes its dialog: focus goes back to the toolbar.
    if (document.activeElement === document.body && source && source.matches(".confirm-form")) byId("select-all").focus();
  });

  // Websocket job events ({type, data, ts} text frames of #live-events) refresh the list; so does a reconnect.
  document.addEventListener("htmx:ws:after:message:incoming", function (event) {
    var type = JSON.parse(event.detail.message.data).type;
    if ((event.target.dataset.refreshOn || "").split(" ").indexOf(type) !== -1) refreshSoon();
  });
  var socketWasOpen = false;
  document.addEventListener("htmx:ws:after:connection", function () {
    if (socketWasOpen) refreshSoon(); // events sent while the socket was down are lost: catch up once
    socketWasOpen = true;
    indicator.classList.add("has-events");
  });
  document.addEventListener("htmx:ws:close", function () { indicator.classList.remove("has-events"); });

  function filtersToUrl(form) {
    var query = new URLSearchParams();
    new FormData(form).forEach(function (value, key) { if (String(value) !== "") query.append(key, String(value)); });
    var search = query.toString();
    var path = location.pathname.indexOf(pageUrl + "/jobs/") === 0 ? location.pathname : pageUrl;
    history.replaceState(history.state, "", path + (search ? "?" + search : ""));
    form.querySelector(".clear-filters").hidden = !search;
  }

  // ---- dialogs: the server renders them open; here they become modal (focus goes to [autofocus]) ------
  var openerId = null;
  var restoring = false;

  function upgradeDialogs() {
    document.querySelectorAll("dialog[data-modal][open]:not(:modal)").forEach(function (dialog) {
      dialog.close();
      dialog.showModal();
      var url = dialog.id === "job-overlay" && dialog.dataset.url;
      if (url && location.pathname !== url && !restoring) {
        history.pushState({ studioOverlay: dialog.dataset.promptId }, "", url + location.search);
      }
      restoring = false;
    });
  }
  upgradeDialogs(); // a page loaded at a job's URL (or a form's answer) arrives with one open

  function closeOverlay(fromHistory) {
    var dialog = byId("job-overlay");
    var promptId = openerId || dialog.dataset.promptId;
    dialog.remove();
    document.title = app.dataset.pageTitle; // the overlay's fragment had named its job in the title
    if (!fromHistory && history.state && history.state.studioOverlay) history.back();
    else if (!fromHistory && location.pathname !== pageUrl) history.pushState(null, "", pageUrl + location.search);
    var link = document.querySelector('.job-card[data-prompt-id="' + CSS.escape(promptId || "") + '"] .job-open');
    if (link) link.focus({ preventScroll: true }); // back to the card the overlay came from
    openerId = null;
  }

  window.addEventListener("popstate", function () {
    var prefix = pageUrl + "/jobs/";
    var dialog = byId("job-overlay");
    var promptId = location.pathname.indexOf(prefix) === 0 && decodeURIComponent(location.pathname.slice(prefix.length));
    if (promptId && (!dialog || dialog.dataset.promptId !== promptId)) {
      restoring = true;
      htmx.ajax("GET", prefix + encodeURIComponent(promptId), { target: "#overlay-root", swap: "innerHTML" });
    } else if (!promptId && dialog) {
      closeOverlay(true);
    }
  });

  // Esc fires "cancel", which does not bubble: the overlay closes through closeOverlay, and a dialog whose
  // form is on its way (a delete) stays until the answer says how it ended.
  document.addEventListener("cancel", function (event) {
    if (event.target.id === "job-overlay" || event.target.querySelector(".htmx-request")) event.preventDefault();
    if (event.target.id === "job-overlay") closeOverlay(false);
  }, true);

  document.addEventListener("click", function (event) {
    var target = event.target;
    var overlay = byId("job-overlay");
    if (overlay && (target === overlay || target.closest(".overlay-close"))) {
      event.preventDefault(); // the close link leads to the list for pages without scripts
      return closeOverlay(false);
    }
    // A plain click on a card (not on its controls, nor while selecting text) opens it through its link.
    var card = target.closest(".job-card");
    if (card && !event.defaultPrevented && event.button === 0 && !(event.ctrlKey || event.metaKey || event.shiftKey || event.altKey)) {
      openerId = card.dataset.promptId;
      var selecting = String(window.getSelection()).length > 0;
      if (!target.closest("a, button, input, label, select, textarea") && !selecting) card.querySelector(".job-open").click();
    }
    if (target.closest(".copy-btn")) copyFrom(target.closest(".copy-btn"));
    var viewer = byId("image-viewer");
    var full = target.closest("a[data-fullscreen]");
    if (full && event.button === 0 && !event.ctrlKey && !event.metaKey) {
      event.preventDefault();
      viewer.querySelector("img").src = full.href;
      viewer.showModal();
    } else if (viewer.open && viewer.contains(target)) {
      viewer.close();
    }
  });

  document.addEventListener("keydown", function (event) { // the output viewer's arrow keys follow its previous and next links
    var link = document.querySelector({ ArrowLeft: "#output-viewer[open] a.viewer-prev", ArrowRight: "#output-viewer[open] a.viewer-next" }[event.key] || "none");
    if (link) link.click();
  });
  document.addEventListener("close", function (event) { // a closed viewer goes; the focus returns to the output it showed
    var viewer = event.target; // (upgradeDialogs closes it once to reopen it modal: it is open again by then)
    var item = viewer.id === "output-viewer" && !viewer.open && document.querySelector('#job-overlay [data-viewer-index="' + viewer.dataset.index + '"]');
    if (item) { viewer.remove(); item.focus(); }
  }, true);

  // Copy buttons copy the text of the element they name (no user text ever sits in a script).
  function copyFrom(button) {
    var source = byId(button.dataset.copyTarget || "");
    var done = function () {
      button.textContent = "Copied";
      button.classList.add("is-copied");
      setTimeout(function () { button.textContent = "Copy"; button.classList.remove("is-copied"); }, 1200);
    };
    if (!source) return;
    if (navigator.clipboard && window.isSecureContext) return navigator.clipboard.writeText(source.textContent).then(done);
    window.getSelection().selectAllChildren(source); // plain http has no async clipboard: copy a selection
    if (document.execCommand("copy")) done();
    window.getSelection().removeAllRanges();
  }
})();

/* Studio History: what only the browser can do on the History page, around htmx and the server's HTML.
 *
 * The countdown of the LIVE pill, pausing while the tab is hidden, websocket events that refresh the list,
 * the reader's time zone (a cookie: the server renders local times), the filters in the address bar, the
 * overlay and the confirm dialog as modal <dialog>s with their own URL and focus, copy buttons, the input
 * image's full-screen view, a button's busy text, and status changes said aloud. Every listener is
 * delegated on document and driven by data- attributes and the DOM hooks of DESIGN.md; nothing here holds
 * server state, and every action works without this file (htmx posts the forms; the server answers HTML).
 */
(function () {
  "use strict";

  var app = document.getElementById("history-app");
  if (!app || !window.htmx) return;
  var pageUrl = app.dataset.pageUrl;
  var indicator = document.getElementById("live-indicator");

  function byId(id) {
    return document.getElementById(id);
  }

  function sourceOf(event) {
    return (event.detail.ctx && event.detail.ctx.sourceElement) || event.target;
  }

  // ---- the reader's time zone: set the cookie, then refresh the list once it is wired ----------------
  var zone = "";
  try {
    zone = Intl.DateTimeFormat().resolvedOptions().timeZone || "";
  } catch (error) {}
  if (/^[A-Za-z0-9_+\/-]{1,60}$/.test(zone) && app.dataset.tz !== zone) {
    document.cookie = "studio_tz=" + zone + "; path=/; max-age=31536000; SameSite=Lax";
    var list = byId("job-list");
    if (list && list.hasAttribute("data-htmx-powered")) refreshSoon();
    else document.addEventListener("htmx:after:init", function wired(event) {
      if (event.target.id !== "job-list") return;
      document.removeEventListener("htmx:after:init", wired);
      refreshSoon();
    });
  }

  // ---- live refresh ---------------------------------------------------------------------------------
  function restartCountdown() {
    if (!indicator) return;
    indicator.classList.remove("is-counting");
    void indicator.offsetWidth; // restart the CSS animation
    indicator.classList.add("is-counting");
  }

  function setFailing(message) {
    if (!indicator) return;
    indicator.classList.toggle("is-failing", !!message);
    var text = indicator.querySelector(".live-status");
    if (text.textContent !== (message || "")) text.textContent = message || "";
  }

  var refreshTimer = null;
  function refreshSoon() {
    // Coalesce a burst of events (a batch delete publishes one per job) into one request.
    clearTimeout(refreshTimer);
    refreshTimer = setTimeout(function () {
      var list = byId("job-list");
      if (list && list.hasAttribute("hx-get")) htmx.trigger(list, "studio:refresh");
    }, 30);
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
  }

  document.addEventListener("visibilitychange", function () {
    if (indicator) indicator.classList.toggle("is-paused", document.hidden);
    if (!document.hidden && indicator) indicator.click();
  });
  if (indicator) indicator.classList.toggle("is-paused", document.hidden);

  document.addEventListener("htmx:config:request", function (event) {
    var ctx = event.detail.ctx;
    // Polling pauses while the tab is hidden (a trigger filter would need 'unsafe-eval', which the CSP refuses).
    if (event.target.id === "job-list" && document.hidden && ctx.sourceEvent && ctx.sourceEvent.type === "every") {
      event.preventDefault();
      return;
    }
    // Once further pages are kept, what refreshes the list asks for everything above where they start.
    var more = byId("job-list-more");
    if (event.target.matches("[data-keeps-pages]") && more && more.hasAttribute("hx-morph-skip") && more.dataset.since) {
      var url = new URL(ctx.request.action, location.href);
      url.searchParams.set("since", more.dataset.since);
      ctx.request.action = url.pathname + url.search;
    }
  });

  document.addEventListener("htmx:finally:request", function (event) {
    event.target.querySelectorAll("[data-idle-text]").forEach(function (button) {
      button.textContent = button.dataset.idleText;
      delete button.dataset.idleText;
    });
  });

  document.addEventListener("htmx:before:request", function (event) {
    if (event.target.id === "job-list") restartCountdown();
    event.target.querySelectorAll("[data-busy-text]").forEach(function (button) {
      button.dataset.idleText = button.textContent; // a button's busy text while its form is on its way
      button.textContent = button.dataset.busyText;
    });
  });

  document.addEventListener("htmx:after:request", function (event) {
    var status = event.detail.ctx.response ? event.detail.ctx.response.status : 0;
    if (event.target.id === "job-list") setFailing(status >= 400 ? "Refresh failed (HTTP " + status + "), retrying" : null);
    if (event.target.classList.contains("list-sentinel")) event.target.classList.toggle("is-failed", status >= 400);
  });

  document.addEventListener("htmx:error", function (event) {
    var source = event.target;
    if (event.detail.ctx && event.detail.ctx.response) return; // an HTTP answer: the server said what it means
    if (source.id === "job-list") setFailing("Offline, retrying");
    if (source.classList && source.classList.contains("list-sentinel")) source.classList.add("is-failed");
    var alert = source.closest && source.closest("dialog") && source.closest("dialog").querySelector("[role=alert]");
    if (alert) alert.textContent = "The server did not answer; nothing may have changed. Refresh to see.";
  });

  // Status changes said aloud: the cards' statuses before a list swap, compared after it.
  function statuses() {
    var seen = {};
    document.querySelectorAll("#job-list .job-card").forEach(function (card) {
      seen[card.dataset.promptId] = card.dataset.status;
    });
    return seen;
  }

  document.addEventListener("htmx:before:swap", function (event) {
    var ctx = event.detail.ctx;
    var source = ctx.sourceElement;
    ctx.studioPage = !!(source && source.classList && source.classList.contains("list-sentinel"));
    if (ctx.target && ctx.target.id === "job-list" && !(source && source.id === "history-filters")) ctx.studioBefore = statuses();
  });

  document.addEventListener("htmx:after:swap", function (event) {
    var ctx = event.detail.ctx;
    var more = byId("job-list-more");
    // Further pages are kept from then on: the poll's morph skips their container.
    if (ctx.studioPage && more && more.querySelector(".job-card")) more.setAttribute("hx-morph-skip", "");
    if (ctx.sourceElement && ctx.sourceElement.id === "history-filters") filtersToUrl(ctx.sourceElement);
    if (ctx.studioBefore && ctx.swap !== "none") announceChanges(ctx.studioBefore, statuses());
    upgradeDialogs();
    // A delete's answer closes its dialog: focus goes back to the toolbar.
    var source = ctx.sourceElement;
    if (document.activeElement === document.body && source && source.matches(".confirm-form")) byId("select-all").focus();
  });

  function announceChanges(before, now) {
    var added = [];
    var changed = [];
    Object.keys(now).forEach(function (id) {
      if (!(id in before)) added.push(id.slice(0, 12) + " " + now[id]);
      else if (before[id] !== now[id]) changed.push(id.slice(0, 12) + " is now " + now[id]);
    });
    var parts = added.length && added.length <= 5 ? ["New: " + added.join(", ")] : [];
    if (changed.length) parts.push(changed.join(", "));
    if (parts.length) byId("action-status").textContent = "Jobs: " + parts.join(". ");
  }

  // Websocket job events (job-events.js fires them from #live-events); catch up once after a reconnect.
  document.addEventListener("studio:job-event", function (event) {
    var wanted = ((event.target.dataset && event.target.dataset.refreshOn) || "").split(/\s+/);
    if (wanted.indexOf(event.detail.type) !== -1) refreshSoon();
  });
  var socketWasOpen = false;
  document.addEventListener("htmx:ws:after:connection", function () {
    if (indicator) indicator.classList.add("has-events");
    if (socketWasOpen) refreshSoon();
    socketWasOpen = true;
  });
  document.addEventListener("htmx:ws:close", function () {
    if (indicator) indicator.classList.remove("has-events");
  });

  function filtersToUrl(form) {
    var query = new URLSearchParams();
    new FormData(form).forEach(function (value, key) {
      if (String(value) !== "") query.append(key, String(value));
    });
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

  function openJob(promptId) {
    htmx.ajax("GET", pageUrl + "/jobs/" + encodeURIComponent(promptId), { target: "#overlay-root", swap: "innerHTML" });
  }

  function closeOverlay(fromHistory) {
    var dialog = byId("job-overlay");
    if (!dialog) return;
    var promptId = openerId || dialog.dataset.promptId;
    dialog.remove();
    if (!fromHistory && history.state && history.state.studioOverlay) history.back();
    else if (!fromHistory && location.pathname !== pageUrl) history.pushState(null, "", pageUrl + location.search);
    var link = document.querySelector('.job-card[data-prompt-id="' + CSS.escape(promptId || "") + '"] .job-open');
    if (link) link.focus({ preventScroll: true }); // back to the card the overlay came from
    openerId = null;
  }

  window.addEventListener("popstate", function () {
    var prefix = pageUrl + "/jobs/";
    var dialog = byId("job-overlay");
    if (location.pathname.indexOf(prefix) === 0) {
      var promptId = decodeURIComponent(location.pathname.slice(prefix.length));
      if (!dialog || dialog.dataset.promptId !== promptId) {
        restoring = true;
        openJob(promptId);
      }
    } else if (dialog) {
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
    var dialog = byId("job-overlay");
    if (dialog && (target === dialog || target.closest(".overlay-close"))) {
      event.preventDefault(); // the close link leads to the list for pages without scripts
      return closeOverlay(false);
    }
    // A plain click on a card (not on its controls, and not while selecting text) opens it through its link.
    var card = target.closest(".job-card");
    if (card && !event.defaultPrevented && event.button === 0 && !(event.ctrlKey || event.metaKey || event.shiftKey || event.altKey)) {
      openerId = card.dataset.promptId;
      var selected = String(window.getSelection ? window.getSelection() : "");
      if (!target.closest("a, button, input, label, select, textarea") && !selected) card.querySelector(".job-open").click();
    }
    var copy = target.closest(".copy-btn");
    if (copy) copyFrom(copy);
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

  // Copy buttons copy the text of the element they name (no user text ever sits in a script).
  function copyFrom(button) {
    var source = byId(button.dataset.copyTarget || "");
    if (!source) return;
    var done = function () {
      button.textContent = "Copied";
      button.classList.add("is-copied");
      setTimeout(function () {
        button.textContent = "Copy";
        button.classList.remove("is-copied");
      }, 1200);
    };
    if (navigator.clipboard && window.isSecureContext) return navigator.clipboard.writeText(source.textContent).then(done);
    var range = document.createRange(); // without the async clipboard (plain http): copy a selection
    range.selectNodeContents(source);
    window.getSelection().removeAllRanges();
    window.getSelection().addRange(range);
    if (document.execCommand("copy")) done();
    window.getSelection().removeAllRanges();
  }
})();

/* Studio History: the History page's glue around htmx.
 *
 * - live refresh: the LIVE indicator's countdown, "refresh now", pause while hidden, the failure state,
 *   and websocket job events (hx-ws) that refresh the list at once;
 * - the detail overlay: open on a card click, modal <dialog>, focus in and back, its own URL;
 * - copy buttons (they copy the text of the element they name), the input image's fullscreen view;
 * - the reader's time zone (a cookie, so the server renders local times) and the filters in the URL.
 *
 * Every listener is delegated on document, so a swapped list keeps working. Behaviour that comes later
 * (selection, delete, retry, keyboard) lives in small files of its own beside this one, using the DOM hooks
 * of DESIGN.md and these events, fired on document:
 *   studio:list-updated  the list changed (a poll, a websocket refresh, a further page, a filter change)
 *   studio:job-event     a websocket job event arrived; detail is {type, data, ts} (job-events.js)
 *   studio:overlay-open / studio:overlay-close   detail is {promptId}
 * and window.StudioHistory.refreshList(), .openJob(promptId), .closeOverlay().
 */
(function () {
  "use strict";

  var app = document.getElementById("history-app");
  if (!app || !window.htmx) return;

  var pageUrl = app.dataset.pageUrl;
  var api = (window.StudioHistory = window.StudioHistory || {});

  function jobList() {
    return document.getElementById("job-list");
  }

  function emit(name, detail) {
    document.dispatchEvent(new CustomEvent(name, { detail: detail || {} }));
  }

  // ---- the reader's time zone ---------------------------------------------------------------------
  // The server renders times in the zone of the "studio_tz" cookie, so a morph never has to undo a
  // client-side rewrite. On the first visit (or after travelling) set it and refresh the list once.
  var zone = "";
  try {
    zone = Intl.DateTimeFormat().resolvedOptions().timeZone || "";
  } catch (error) {
    zone = "";
  }
  var zoneChanged = /^[A-Za-z0-9_+\/-]{1,60}$/.test(zone) && app.dataset.tz !== zone;
  if (zoneChanged) {
    document.cookie = "studio_tz=" + zone + "; path=/; max-age=31536000; SameSite=Lax";
  }

  // ---- live refresh -------------------------------------------------------------------------------
  var indicator = document.getElementById("live-indicator");
  var statusText = indicator && indicator.querySelector(".live-status");

  function restartCountdown() {
    if (!indicator) return;
    indicator.classList.remove("is-counting");
    void indicator.offsetWidth; // restart the CSS animation
    indicator.classList.add("is-counting");
  }

  function setFailing(message) {
    if (!indicator) return;
    indicator.classList.toggle("is-failing", !!message);
    if (statusText && statusText.textContent !== (message || "")) statusText.textContent = message || "";
  }

  function setPaused(paused) {
    if (indicator) indicator.classList.toggle("is-paused", paused);
  }

  // Refresh now and restart the poll's interval, so the countdown and the next poll agree.
  function refreshList() {
    var list = jobList();
    if (!list || !list.hasAttribute("hx-get")) return;
    htmx.process(list, true);
    htmx.trigger(list, "studio:refresh");
  }
  api.refreshList = refreshList;

  var refreshTimer = null;
  function refreshSoon() {
    // Coalesce a burst of events (a batch delete publishes one per job) into one request.
    clearTimeout(refreshTimer);
    refreshTimer = setTimeout(function () {
      var list = jobList();
      if (list && list.hasAttribute("hx-get")) htmx.trigger(list, "studio:refresh");
    }, 30);
  }

  if (indicator) {
    // The page's CSP allows no inline style attributes: the interval reaches the CSS from here.
    indicator.style.setProperty("--poll-seconds", (parseFloat(indicator.dataset.pollSeconds) || 5) + "s");
    indicator.addEventListener("click", refreshList);
    restartCountdown();
  }

  // Once further pages are loaded, keep them: the morph skips their container, and the poll asks for
  // everything above the cursor they start below (history.list_context), so nothing falls into a gap.
  function keepLoadedPages() {
    var more = document.getElementById("job-list-more");
    if (more && more.querySelector(".job-card") && !more.hasAttribute("hx-morph-skip")) {
      more.setAttribute("hx-morph-skip", "");
    }
  }

  document.addEventListener("htmx:config:request", function (event) {
    if (event.target.id !== "job-list") return;
    var ctx = event.detail.ctx;
    // Polling pauses while the tab is hidden. (A trigger filter like [!document.hidden] would need
    // 'unsafe-eval', which the page's CSP refuses; cancelling the request here needs nothing.)
    if (document.hidden && ctx.sourceEvent && ctx.sourceEvent.type === "every") {
      event.preventDefault();
      return;
    }
    var more = document.getElementById("job-list-more");
    if (more && more.hasAttribute("hx-morph-skip") && more.dataset.since && ctx.request.action.indexOf("since=") === -1) {
      var url = new URL(ctx.request.action, location.href);
      url.searchParams.set("since", more.dataset.since);
      ctx.request.action = url.pathname + url.search;
    }
  });

  document.addEventListener("visibilitychange", function () {
    setPaused(document.hidden);
    if (!document.hidden) refreshList();
  });
  setPaused(document.hidden);

  document.addEventListener("htmx:before:request", function (event) {
    if (event.target.id === "job-list") restartCountdown();
  });

  document.addEventListener("htmx:after:request", function (event) {
    var source = event.target;
    var status = event.detail.ctx && event.detail.ctx.response ? event.detail.ctx.response.status : 0;
    if (source.id === "job-list") {
      setFailing(status >= 400 ? "Refresh failed (HTTP " + status + "), retrying" : null);
    } else if (source.classList && source.classList.contains("list-sentinel")) {
      source.classList.toggle("is-failed", status >= 400);
    }
  });

  document.addEventListener("htmx:error", function (event) {
    var source = event.target;
    if (source.id === "job-list") {
      setFailing("Offline, retrying");
    } else if (source.classList && source.classList.contains("list-sentinel")) {
      source.classList.add("is-failed");
    }
  });

  // A further page replaces its sentinel, and htmx then reports the first new card as the source:
  // note which swaps were pages before that happens.
  document.addEventListener("htmx:before:swap", function (event) {
    var ctx = event.detail.ctx || {};
    var source = ctx.sourceElement;
    ctx.studioPage = !!(source && source.classList && source.classList.contains("list-sentinel"));
  });

  document.addEventListener("htmx:after:swap", function (event) {
    var ctx = event.detail.ctx || {};
    var source = ctx.sourceElement;
    var target = ctx.target;
    if (target && target.id === "overlay-root") {
      overlayArrived();
      return;
    }
    var fromFilters = !!(source && source.id === "history-filters");
    if (fromFilters) filtersToUrl(source);
    if (ctx.studioPage) keepLoadedPages();
    // A 204 (the poll's "unchanged") or a swap:none status still ends here: nothing changed, so say nothing.
    if (ctx.swap === "none") return;
    if (ctx.studioPage || fromFilters || (target && target.id === "job-list")) {
      emit("studio:list-updated", { source: source });
    }
  });

  // Websocket job events (job-events.js fires them from #live-events, and they bubble to document).
  document.addEventListener("studio:job-event", function (event) {
    var wanted = ((event.target.dataset && event.target.dataset.refreshOn) || "").split(/\s+/);
    if (wanted.indexOf(event.detail.type) !== -1) refreshSoon();
  });

  var socketWasOpen = false;
  document.addEventListener("htmx:ws:after:connection", function () {
    if (indicator) indicator.classList.add("has-events");
    // Events sent while the socket was down are lost: catch up once on a reconnect.
    if (socketWasOpen) refreshSoon();
    socketWasOpen = true;
  });
  document.addEventListener("htmx:ws:close", function () {
    if (indicator) indicator.classList.remove("has-events");
  });

  // ---- filters in the address bar ---------------------------------------------------------------
  function filtersToUrl(form) {
    var query = new URLSearchParams();
    new FormData(form).forEach(function (value, key) {
      if (String(value) !== "") query.append(key, String(value));
    });
    var search = query.toString();
    var url = location.pathname.indexOf(pageUrl + "/jobs/") === 0 ? location.pathname : pageUrl;
    history.replaceState(history.state, "", url + (search ? "?" + search : ""));
    var clear = form.querySelector(".clear-filters");
    if (clear) clear.hidden = !search;
  }

  // ---- the detail overlay -------------------------------------------------------------------------
  var openerId = null;

  function overlay() {
    return document.getElementById("job-overlay");
  }

  function overlayArrived() {
    var dialog = overlay();
    if (!dialog) return;
    if (!dialog.matches(":modal")) {
      dialog.close();
      dialog.showModal();
    }
    var close = dialog.querySelector(".overlay-close");
    if (close) close.focus();
    var url = dialog.dataset.url;
    if (url && location.pathname !== url && !api._restoring) {
      history.pushState({ studioOverlay: dialog.dataset.promptId }, "", url + location.search);
    }
    api._restoring = false;
    emit("studio:overlay-open", { promptId: dialog.dataset.promptId });
  }

  function openJob(promptId) {
    openerId = promptId;
    return htmx.ajax("GET", pageUrl + "/jobs/" + encodeURIComponent(promptId), {
      target: "#overlay-root",
      swap: "innerHTML",
    });
  }
  api.openJob = openJob;

  function closeOverlay(fromHistory) {
    var dialog = overlay();
    if (!dialog) return;
    var promptId = dialog.dataset.promptId;
    dialog.close();
    dialog.remove();
    if (!fromHistory) {
      if (history.state && history.state.studioOverlay) {
        history.back();
      } else if (location.pathname !== pageUrl) {
        history.pushState(null, "", pageUrl + location.search);
      }
    }
    // Focus goes back to the card the overlay came from.
    var card = document.getElementById("job-" + (openerId || promptId));
    var link = card && card.querySelector(".job-open");
    if (link) link.focus({ preventScroll: true });
    openerId = null;
    emit("studio:overlay-close", { promptId: promptId });
  }
  api.closeOverlay = function () {
    closeOverlay(false);
  };

  window.addEventListener("popstate", function () {
    var prefix = pageUrl + "/jobs/";
    var dialog = overlay();
    if (location.pathname.indexOf(prefix) === 0) {
      var promptId = decodeURIComponent(location.pathname.slice(prefix.length));
      if (!dialog || dialog.dataset.promptId !== promptId) {
        api._restoring = true;
        openJob(promptId);
      }
    } else if (dialog) {
      closeOverlay(true);
    }
  });

  // A click on a card (not on its checkbox, buttons or links, and without a modifier key: those belong to
  // selection) opens the overlay through the card's own link.
  document.addEventListener("click", function (event) {
    var card = event.target.closest && event.target.closest(".job-card");
    if (!card || event.defaultPrevented || event.button !== 0) return;
    if (event.ctrlKey || event.metaKey || event.shiftKey || event.altKey) return;
    var link = card.querySelector(".job-open");
    if (event.target.closest("a, button, input, label, select, textarea")) {
      if (event.target.closest(".job-open")) openerId = card.dataset.promptId;
      return;
    }
    var selection = window.getSelection && window.getSelection();
    if (selection && String(selection).length > 0) return; // the reader is selecting text
    if (link) {
      openerId = card.dataset.promptId;
      link.click();
    }
  });

  document.addEventListener("click", function (event) {
    var dialog = overlay();
    if (dialog && (event.target === dialog || event.target.closest(".overlay-close"))) {
      event.preventDefault(); // the close link leads to the list for pages without scripts
      closeOverlay(false); // the close button, or the backdrop around the panel
    }
  });

  // Esc on a modal dialog fires "cancel" (it does not bubble: listen in the capture phase).
  document.addEventListener(
    "cancel",
    function (event) {
      if (event.target.id === "job-overlay") {
        event.preventDefault();
        closeOverlay(false);
      }
    },
    true
  );

  // A page loaded at a job's URL arrives with the overlay open: make it modal.
  if (overlay()) {
    var initial = overlay();
    initial.close();
    initial.showModal();
    var closeButton = initial.querySelector(".overlay-close");
    if (closeButton) closeButton.focus();
  }

  // ---- copy buttons and the input image viewer --------------------------------------------------
  function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text).catch(function () {
        return legacyCopy(text);
      });
    }
    return Promise.resolve(legacyCopy(text));
  }

  function legacyCopy(text) {
    var area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    (overlay() || document.body).appendChild(area);
    area.select();
    try {
      document.execCommand("copy");
    } finally {
      area.remove();
    }
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest && event.target.closest(".copy-btn");
    if (!button) return;
    var source = document.getElementById(button.dataset.copyTarget || "");
    if (!source) return;
    var label = button.textContent;
    copyText(source.textContent).then(function () {
      button.textContent = "Copied";
      button.classList.add("is-copied");
      setTimeout(function () {
        button.textContent = label;
        button.classList.remove("is-copied");
      }, 1200);
    });
  });

  var viewer = document.getElementById("image-viewer");
  document.addEventListener("click", function (event) {
    var link = event.target.closest && event.target.closest("a[data-fullscreen]");
    if (link && viewer && event.button === 0 && !event.ctrlKey && !event.metaKey) {
      event.preventDefault();
      viewer.querySelector("img").src = link.href;
      viewer.showModal();
      return;
    }
    if (viewer && viewer.open && viewer.contains(event.target)) viewer.close();
  });

  // The first refresh in the reader's zone waits until htmx has wired the list (it initialises after
  // this script runs; a trigger before that would be lost).
  if (zoneChanged) {
    var list = jobList();
    if (list && list.hasAttribute("data-htmx-powered")) {
      refreshSoon();
    } else {
      document.addEventListener("htmx:after:init", function wired(event) {
        if (event.target.id !== "job-list") return;
        document.removeEventListener("htmx:after:init", wired);
        refreshSoon();
      });
    }
  }
})();

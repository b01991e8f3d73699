/* Studio History, the queue page: job events from the websocket (#queue-events, htmx's hx-ws) update a
 * running job's progress bar in place, and refresh the list at once when a job is queued, starts or ends.
 * Without the websocket the list still refreshes itself every 2 seconds. */
(function () {
  "use strict";

  var refreshTimer = null;

  function refreshSoon() {
    // Coalesce a burst of events into one request.
    clearTimeout(refreshTimer);
    refreshTimer = setTimeout(function () {
      var list = document.getElementById("queue-list");
      if (list) htmx.trigger(list, "studio:refresh");
    }, 50);
  }

  function showProgress(data) {
    var rows = document.querySelectorAll(".queue-job[data-prompt-id]");
    var row = null;
    for (var index = 0; index < rows.length; index++) {
      if (rows[index].dataset.promptId === data.prompt_id) row = rows[index];
    }
    if (!row || typeof data.value !== "number" || typeof data.max !== "number" || !data.max) {
      refreshSoon(); // a job this page does not show yet
      return;
    }
    var box = row.querySelector(".queue-progress");
    var bar = box.querySelector("progress");
    var text = box.querySelector(".progress-text");
    if (!bar) {
      bar = document.createElement("progress");
      box.insertBefore(bar, text);
    }
    bar.max = data.max;
    bar.value = data.value;
    box.dataset.node = data.node;
    box.dataset.value = data.value;
    box.dataset.max = data.max;
    text.textContent = "node #" + data.node + " \u00b7 " + data.value + "/" + data.max;
  }

  // Job events from #queue-events (job-events.js parses the frames).
  document.addEventListener("studio:job-event", function (event) {
    if (!event.target || event.target.id !== "queue-events") return;
    var message = event.detail;
    if (message.type === "job.progress") showProgress(message.data || {});
    else refreshSoon();
  });
})();

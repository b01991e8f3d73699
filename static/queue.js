/* Studio History, the queue page: job events from the websocket (#queue-events, htmx's hx-ws) move a running
 * job's progress bar in place (a browser-only nicety: the list re-renders it every 2 s anyway) and refresh
 * the list at once when a job is queued, starts or ends. */
(function () {
  "use strict";

  var refreshTimer = null;
  function refreshSoon() { // coalesces a burst of events into one request
    clearTimeout(refreshTimer);
    refreshTimer = setTimeout(function () { htmx.trigger("#queue-list", "studio:refresh"); }, 50);
  }

  function showProgress(data) {
    var row = document.querySelector('.queue-job[data-prompt-id="' + CSS.escape(String(data.prompt_id)) + '"]');
    if (!row || typeof data.value !== "number" || typeof data.max !== "number" || !data.max) return refreshSoon();
    var box = row.querySelector(".queue-progress");
    var text = box.querySelector(".progress-text");
    var bar = box.querySelector("progress") || box.insertBefore(document.createElement("progress"), text);
    bar.max = data.max;
    bar.value = data.value;
    Object.assign(box.dataset, { node: data.node, value: data.value, max: data.max });
    text.textContent = "node #" + data.node + " \u00b7 " + data.value + "/" + data.max;
  }

  // hx-ws hands each text frame over as it comes; a job event is {type, data, ts}.
  document.addEventListener("htmx:ws:after:message:incoming", function (event) {
    if (event.target.id !== "queue-events") return;
    var message = JSON.parse(event.detail.message.data);
    if (message.type === "job.progress") showProgress(message.data || {});
    else refreshSoon();
  });
})();

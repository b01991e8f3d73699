/* Studio History: job events from the websocket, for every page.
 *
 * htmx's hx-ws extension hands each text frame to "htmx:ws:after:message:incoming". A job event
 * ({type, data, ts}) becomes one "studio:job-event" fired on the element that holds the socket, bubbling
 * to document, with the event as its detail. Pages listen for that instead of parsing frames themselves.
 */
(function () {
  "use strict";

  document.addEventListener("htmx:ws:after:message:incoming", function (event) {
    var message;
    try {
      message = JSON.parse(event.detail.message.data);
    } catch (error) {
      return;
    }
    if (!message || typeof message.type !== "string") return;
    event.target.dispatchEvent(new CustomEvent("studio:job-event", { bubbles: true, detail: message }));
  });
})();

/* Studio History: what the page does with jobs (issue 5): delete the selection, retry, export.
 *
 * - "Delete selected" opens dialog#confirm-dialog (partials/confirm_dialog.html, outside #job-list, so no
 *   poll replaces it) with "Delete N job(s) and their output files? This cannot be undone." and the files
 *   and bytes the server counts. Cancel has focus; Esc or Cancel closes it and nothing happens; only the
 *   Delete button deletes, and exactly the jobs the dialog named (a poll meanwhile changes nothing).
 *   While the delete is in flight both buttons are disabled. Jobs the server could not delete stay
 *   selected, with its reason on their cards.
 * - Retry (on a card and in the overlay) is htmx's own POST of retry_of to the execute endpoint, which
 *   reuses the original's parameters, resolved seeds and input image (runner.Studio.execute). One retry
 *   per job at a time: every Retry button of that job is disabled until the answer (htmx disables the
 *   clicked one at once), and the server refuses a second retry within seconds (409). Beside the button:
 *   where the new job is (the queue page, then the job itself when it ends), or the server's reason.
 * - "Export selected" downloads the selected records as a JSON array (the CLI export's shape).
 *
 * Notes on cards are kept by prompt id and drawn again after every list update, like the selection.
 * Every listener is delegated on document; user text only ever reaches the page through textContent.
 * API: window.StudioHistory.actions.askDelete().
 */
(function () {
  "use strict";

  var app = document.getElementById("history-app");
  var config = document.getElementById("history-actions");
  if (!app || !config) return;

  var api = (window.StudioHistory = window.StudioHistory || {});
  var urls = config.dataset;
  var dialog = document.getElementById("confirm-dialog");

  var pendingIds = null; // the ids the open dialog asks about
  var deleting = false;
  var retrying = new Set(); // ids with a retry in flight
  var retriedAs = new Map(); // new prompt id -> original prompt id
  var notes = new Map(); // prompt id -> {kind, text, error, link: {text, href, promptId}, after}

  function selection() {
    return api.selection;
  }

  function announce(text) {
    if (api.announce) api.announce(text);
  }

  function cssId(value) {
    return window.CSS && CSS.escape ? CSS.escape(value) : String(value).replace(/["\\]/g, "\\$&");
  }

  // POST JSON (with Accept, when given); the fetch rejects only when nothing answers.
  function post(url, body, accept) {
    var headers = { "Content-Type": "application/json" };
    if (accept) headers.Accept = accept;
    return fetch(url, { method: "POST", credentials: "same-origin", headers: headers, body: JSON.stringify(body) });
  }

  // An answer as {ok, status, data, response}: data is its JSON body, or null (never rejects).
  function readJson(response) {
    var result = { ok: response.ok, status: response.status, data: null, response: response };
    if ((response.headers.get("Content-Type") || "").indexOf("json") === -1) return Promise.resolve(result);
    return response.json().then(
      function (data) {
        result.data = data;
        return result;
      },
      function () {
        return result;
      }
    );
  }

  // POST JSON; resolve to {ok, status, data, response} (never reject on HTTP errors).
  function postJson(url, body) {
    return post(url, body, "application/json").then(readJson);
  }

  function reasonOf(result) {
    if (result.data && typeof result.data.error === "string") return result.data.error;
    return "HTTP " + result.status;
  }

  function humanSize(bytes) {
    var units = ["bytes", "KB", "MB", "GB", "TB"];
    var value = Number(bytes) || 0;
    var unit = 0;
    while (value >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    return (unit === 0 ? String(value) : value.toFixed(value < 10 ? 1 : 0)) + " " + units[unit];
  }

  function plural(count, one, many) {
    return count + " " + (count === 1 ? one : many);
  }

  function jobUrl(promptId) {
    return urls.jobUrl.replace("PROMPT_ID", encodeURIComponent(promptId));
  }

  // ---- the toast: what the last action did --------------------------------------------------------
  var toastTimer = null;
  function toast(text, isError) {
    var box = document.getElementById("action-toast");
    announce(text);
    if (!box) return;
    box.querySelector(".action-toast-text").textContent = text;
    box.classList.toggle("is-error", !!isError);
    box.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(function () {
      box.hidden = true;
    }, isError ? 15000 : 6000);
  }

  document.addEventListener("click", function (event) {
    if (event.target.closest && event.target.closest(".action-toast-close")) {
      document.getElementById("action-toast").hidden = true;
    }
  });

  // ---- notes beside cards and retry buttons ------------------------------------------------------
  function noteElement(note) {
    var element = document.createElement("span");
    element.className = "action-note note-" + note.kind + (note.error ? " is-error" : "");
    element.dataset.noteKind = note.kind;
    fillNote(element, note);
    return element;
  }

  function fillNote(element, note) {
    var signature = JSON.stringify(note);
    if (element.dataset.signature === signature) return;
    element.dataset.signature = signature;
    element.textContent = note.text;
    if (note.link) {
      var link = document.createElement("a");
      link.href = note.link.href;
      link.textContent = note.link.text;
      if (note.link.promptId) link.dataset.openJob = note.link.promptId;
      element.appendChild(link);
    }
    if (note.after) element.appendChild(document.createTextNode(note.after));
    element.classList.toggle("is-error", !!note.error);
  }

  // Put (or update, or remove) the note of one job beside each of its Retry buttons, or on its card.
  function drawNote(promptId) {
    var note = notes.get(promptId);
    var hosts = [];
    var buttons = document.querySelectorAll('.retry-btn[data-prompt-id="' + cssId(promptId) + '"]');
    if (note && note.kind === "retry") {
      buttons.forEach(function (button) {
        hosts.push({ parent: button.parentNode, after: button });
      });
    } else {
      var card = document.getElementById("job-" + promptId);
      var status = card && card.querySelector(".job-status");
      if (status) hosts.push({ parent: status, after: null });
    }
    // Remove notes of this job that are no longer wanted where they are.
    document.querySelectorAll(".action-note[data-note-for]").forEach(function (element) {
      if (element.dataset.noteFor !== promptId) return;
      var wanted = note && hosts.some(function (host) {
        return host.parent === element.parentNode && element.dataset.noteKind === note.kind;
      });
      if (!wanted) element.remove();
    });
    if (!note) return;
    hosts.forEach(function (host) {
      var existing = null;
      Array.prototype.forEach.call(host.parent.children, function (child) {
        if (child.classList.contains("action-note") && child.dataset.noteFor === promptId) existing = child;
      });
      if (existing) {
        fillNote(existing, note);
        return;
      }
      var element = noteElement(note);
      element.dataset.noteFor = promptId;
      if (host.after) host.after.insertAdjacentElement("afterend", element);
      else host.parent.appendChild(element);
    });
    buttons.forEach(function (button) {
      var busy = retrying.has(promptId);
      if (button.disabled !== busy && button.dataset.retryUrl) button.disabled = busy;
      if (busy) button.setAttribute("aria-busy", "true");
      else button.removeAttribute("aria-busy");
    });
  }

  function drawAllNotes() {
    notes.forEach(function (note, promptId) {
      drawNote(promptId);
    });
  }

  function setNote(promptId, note) {
    if (note) notes.set(promptId, note);
    else notes.delete(promptId);
    drawNote(promptId);
  }

  // ---- delete ------------------------------------------------------------------------------------------
  function part(selector) {
    return dialog ? dialog.querySelector(selector) : null;
  }

  function setDeleting(busy) {
    deleting = busy;
    var ok = part('button[value="confirm"]');
    if (ok) {
      ok.disabled = busy;
      ok.textContent = busy ? "Deleting…" : "Delete";
    }
    var cancel = part('button[value="cancel"]');
    if (cancel) cancel.disabled = busy;
    if (dialog) dialog.toggleAttribute("aria-busy", busy);
    var button = document.getElementById("delete-selected");
    if (button) {
      button.disabled = busy;
      button.setAttribute("aria-disabled", busy ? "true" : "false");
    }
  }

  function showDialogError(text) {
    var box = part(".confirm-error");
    if (!box) return;
    box.textContent = text || "";
    box.hidden = !text;
  }

  function askDelete() {
    if (!dialog || deleting || dialog.open) return;
    var ids = selection() ? selection().ids() : [];
    if (!ids.length) return;
    pendingIds = ids;
    part(".confirm-message").textContent =
      "Delete " + ids.length + " job(s) and their output files? This cannot be undone.";
    var usage = part(".confirm-usage");
    usage.textContent = "Counting their files…";
    showDialogError("");
    dialog.returnValue = "";
    dialog.showModal();
    var cancel = part('button[value="cancel"]');
    if (cancel) cancel.focus();
    postJson(urls.usageUrl, { prompt_ids: ids })
      .then(function (result) {
        if (pendingIds !== ids) return;
        if (result.ok && result.data) {
          usage.textContent =
            "That frees " + plural(result.data.files, "file", "files") + ", " + humanSize(result.data.bytes) + ".";
        } else {
          usage.textContent = "Could not count their files: " + reasonOf(result) + ".";
        }
      })
      .catch(function () {
        if (pendingIds === ids) usage.textContent = "Could not count their files: the server did not answer.";
      });
  }

  function removeCard(promptId) {
    var card = document.getElementById("job-" + promptId);
    if (card) card.remove();
  }

  function confirmDelete() {
    if (deleting || !pendingIds) return;
    var ids = pendingIds;
    setDeleting(true);
    showDialogError("");
    postJson(urls.deleteUrl, { prompt_ids: ids })
      .then(function (result) {
        if (!result.ok || !result.data || !Array.isArray(result.data.deleted)) {
          showDialogError("Nothing was deleted: " + reasonOf(result));
          announce("Nothing was deleted: " + reasonOf(result));
          return;
        }
        var report = result.data;
        var gone = report.deleted.concat(report.not_found || []);
        gone.forEach(function (promptId) {
          notes.delete(promptId);
          if (selection()) selection().set(promptId, false);
          removeCard(promptId);
        });
        var failed = report.failed || [];
        failed.forEach(function (failure) {
          setNote(failure.prompt_id, { kind: "delete", error: true, text: "Not deleted: " + failure.error });
          if (selection()) selection().set(failure.prompt_id, true);
        });
        pendingIds = null;
        setDeleting(false);
        dialog.close("done");
        var summary =
          "Deleted " + plural(report.deleted.length, "job", "jobs") +
          " (" + plural(report.files_removed, "file", "files") + ", " + humanSize(report.bytes_freed) + ").";
        if (failed.length) {
          summary += " " + plural(failed.length, "job", "jobs") + " could not be deleted and " +
            (failed.length === 1 ? "stays" : "stay") + " selected: " +
            failed.map(function (failure) {
              return failure.prompt_id.slice(0, 12) + ": " + failure.error;
            }).join("; ");
        }
        toast(summary, failed.length > 0);
        if (api.refreshList) api.refreshList();
      })
      .catch(function () {
        showDialogError("The delete did not complete: the server did not answer. Refresh to see what is left.");
      })
      .finally(function () {
        if (deleting) setDeleting(false);
      });
  }

  document.addEventListener("click", function (event) {
    var target = event.target;
    if (!target.closest) return;
    if (target.closest("#delete-selected")) {
      askDelete();
      return;
    }
    if (dialog && target.closest('#confirm-dialog button[value="confirm"]')) {
      event.preventDefault(); // the dialog stays open until the server has answered
      confirmDelete();
      return;
    }
  });

  if (dialog) {
    // Esc: cancel, unless the delete is already on its way (then the dialog shows how it ends).
    dialog.addEventListener("cancel", function (event) {
      if (deleting) event.preventDefault();
    });
    dialog.addEventListener("close", function () {
      if (!deleting) pendingIds = null;
      if (dialog.returnValue === "cancel" || dialog.returnValue === "") announce("Delete cancelled");
      // Focus goes back to the toolbar: "Delete selected", or "Select all" when nothing is left selected.
      var button = document.getElementById("delete-selected");
      if (!button || button.hidden) button = document.getElementById("select-all");
      if (button) button.focus({ preventScroll: true });
    });
  }

  // ---- retry -----------------------------------------------------------------------------------------
  // The Retry button posts itself through htmx (partials/retry_button.html: hx-post with retry_of,
  // hx-disable="this"); this adds what htmx cannot know: one retry per job across the card's and the
  // overlay's buttons, and what the answer means.
  function retryButtonOf(event) {
    var source = event.detail && event.detail.ctx ? event.detail.ctx.sourceElement : event.target;
    return source && source.classList && source.classList.contains("retry-btn") ? source : null;
  }

  function retryAnswered(promptId, status, text) {
    var data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (error) {
      data = null;
    }
    var result = { status: status, data: data };
    var newId = data && typeof data.prompt_id === "string" ? data.prompt_id : null;
    if ((status === 202 || status === 409) && newId) {
      retriedAs.set(newId, promptId);
      setNote(promptId, {
        kind: "retry",
        text: status === 202 ? "Queued as " : "Already retried as ",
        link: { text: newId.slice(0, 12), href: urls.queueUrl },
        after: " on the queue",
      });
      announce("Retry of " + promptId.slice(0, 12) + " queued as " + newId.slice(0, 12));
      refreshRetryNotes();
      return;
    }
    var reason = reasonOf(result);
    setNote(promptId, { kind: "retry", error: true, text: "Retry failed: " + reason });
    announce("Retry of " + promptId.slice(0, 12) + " failed: " + reason);
  }

  document.addEventListener("htmx:config:request", function (event) {
    var button = retryButtonOf(event);
    if (!button) return;
    var promptId = button.dataset.promptId;
    if (retrying.has(promptId)) {
      event.preventDefault(); // this job's other Retry button (card or overlay) is already on its way
      return;
    }
    retrying.add(promptId);
    event.detail.ctx.request.headers.Accept = "application/json";
    setNote(promptId, { kind: "retry", text: "Retrying…" });
  });

  document.addEventListener("htmx:after:request", function (event) {
    var button = retryButtonOf(event);
    if (!button) return;
    var ctx = event.detail.ctx;
    retryAnswered(button.dataset.promptId, ctx.response ? ctx.response.status : 0, ctx.text || "");
  });

  document.addEventListener("htmx:error", function (event) {
    var button = retryButtonOf(event);
    if (!button) return;
    var ctx = event.detail.ctx;
    if (ctx && ctx.response) return; // an HTTP answer: htmx:after:request has said what it means
    setNote(button.dataset.promptId, { kind: "retry", error: true, text: "Retry failed: the server did not answer" });
    announce("Retry failed: the server did not answer");
  });

  document.addEventListener("htmx:finally:request", function (event) {
    var button = retryButtonOf(event);
    if (!button) return;
    retrying.delete(button.dataset.promptId);
    drawNote(button.dataset.promptId);
  });

  // When a retry's new job ends, its note points at the job itself.
  function retryEnded(newId, status) {
    var original = retriedAs.get(newId);
    if (!original) return;
    setNote(original, {
      kind: "retry",
      error: status !== "completed",
      text: "Retried as ",
      link: { text: newId.slice(0, 12), href: jobUrl(newId), promptId: newId },
      after: ": " + status,
    });
  }

  function refreshRetryNotes() {
    retriedAs.forEach(function (original, newId) {
      var card = document.getElementById("job-" + newId);
      if (card) retryEnded(newId, card.dataset.status);
    });
  }

  document.addEventListener("studio:job-event", function (event) {
    var message = event.detail || {};
    var data = message.data || {};
    if (/^job\.(completed|failed|stalled)$/.test(message.type || "") && retriedAs.has(data.prompt_id)) {
      retryEnded(data.prompt_id, data.status);
    }
  });

  // A note's link to a job opens its overlay in place (a plain link still works without scripts).
  document.addEventListener("click", function (event) {
    var link = event.target.closest && event.target.closest(".action-note a[data-open-job]");
    if (!link || event.button !== 0 || event.ctrlKey || event.metaKey || event.shiftKey) return;
    if (!api.openJob) return;
    event.preventDefault();
    api.openJob(link.dataset.openJob);
  });

  // ---- export selected -----------------------------------------------------------------------------
  function filenameOf(response, fallback) {
    var header = response.headers.get("Content-Disposition") || "";
    var match = /filename="?([^";]+)"?/.exec(header);
    return match ? match[1] : fallback;
  }

  function exportSelected(button) {
    var ids = selection() ? selection().ids() : [];
    if (!ids.length || button.disabled) return;
    button.disabled = true;
    post(urls.exportUrl, { prompt_ids: ids })
      .then(function (response) {
        if (!response.ok) {
          return readJson(response).then(function (result) {
            throw new Error(reasonOf(result));
          });
        }
        var name = filenameOf(response, "studio-history-export.json");
        return response.blob().then(function (blob) {
          var link = document.createElement("a");
          link.href = URL.createObjectURL(blob);
          link.download = name;
          link.hidden = true;
          document.body.appendChild(link);
          link.click();
          link.remove();
          setTimeout(function () {
            URL.revokeObjectURL(link.href);
          }, 60000);
          toast("Exported " + plural(ids.length, "job", "jobs") + " to " + name + ".");
        });
      })
      .catch(function (error) {
        toast("Export failed: " + error.message, true);
      })
      .finally(function () {
        button.disabled = false;
      });
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest && event.target.closest("#export-selected");
    if (button) exportSelected(button);
  });

  // ---- status changes, said aloud ----------------------------------------------------------------------
  // The list's cards by id and status; after each update, new jobs and changed statuses are announced.
  function cardStatuses() {
    var statuses = new Map();
    document.querySelectorAll("#job-list .job-card").forEach(function (card) {
      statuses.set(card.dataset.promptId, card.dataset.status);
    });
    return statuses;
  }

  var shownStatuses = cardStatuses();

  function announceStatusChanges() {
    var now = cardStatuses();
    var added = [];
    var changed = [];
    now.forEach(function (status, promptId) {
      if (!shownStatuses.has(promptId)) added.push(promptId.slice(0, 12) + " " + status);
      else if (shownStatuses.get(promptId) !== status) changed.push(promptId.slice(0, 12) + " is now " + status);
    });
    shownStatuses = now;
    var parts = [];
    // A further page or a filter brings many cards at once: that is not news.
    if (added.length && added.length <= 5) parts.push("New: " + added.join(", "));
    if (changed.length) parts.push(changed.join(", "));
    if (parts.length) announce("Jobs: " + parts.join(". "));
  }

  // ---- after the list or the overlay changes -------------------------------------------------------
  document.addEventListener("studio:list-updated", function (event) {
    var source = event.detail && event.detail.source;
    if (source && source.id === "history-filters") shownStatuses = cardStatuses();
    else announceStatusChanges();
    // A job whose card is gone takes its delete note with it; retry notes stay (the overlay may show them).
    notes.forEach(function (note, promptId) {
      if (note.kind === "delete" && !document.getElementById("job-" + promptId)) notes.delete(promptId);
    });
    refreshRetryNotes();
    drawAllNotes();
  });
  document.addEventListener("studio:overlay-open", drawAllNotes);
  document.addEventListener("studio:selection-changed", function () {
    // A job deselected by hand no longer needs its "not deleted" note.
    notes.forEach(function (note, promptId) {
      if (note.kind === "delete" && selection() && !selection().has(promptId)) setNote(promptId, null);
    });
  });

  api.actions = { askDelete: askDelete };
})();

// The web view's only script: relative times, tidy filter URLs, and live events on a job page.
// Everything it does is an extra: the pages work without it.
(function () {
  "use strict";

  function span(seconds) {
    seconds = Math.max(0, Math.round(seconds));
    var d = Math.floor(seconds / 86400), h = Math.floor(seconds % 86400 / 3600);
    var m = Math.floor(seconds % 3600 / 60), s = seconds % 60;
    if (d) return h ? d + " d " + h + " h" : d + " d";
    if (h) return m ? h + " h " + m + " min" : h + " h";
    if (m) return s ? m + " min " + s + " s" : m + " min";
    return s + " s";
  }

  function refreshTimes(root) {
    var now = Date.now();
    root.querySelectorAll("time[data-relative]").forEach(function (el) {
      var at = Date.parse(el.getAttribute("datetime"));
      var rel = el.querySelector(".rel");
      if (isNaN(at) || !rel) return;
      var delta = (now - at) / 1000;
      rel.textContent = Math.abs(delta) < 5 ? "just now" : delta > 0 ? span(delta) + " ago" : "in " + span(-delta);
    });
  }
  setInterval(function () { refreshTimes(document); }, 30000);

  // Empty filter fields stay out of the URL (the server ignores them either way).
  var form = document.getElementById("filters");
  if (form) {
    form.addEventListener("submit", function () {
      Array.prototype.forEach.call(form.elements, function (el) {
        if (el.name && el.value === "" && el.type !== "submit") el.disabled = true;
      });
    });
    window.addEventListener("pageshow", function () {
      Array.prototype.forEach.call(form.elements, function (el) { el.disabled = false; });
    });
  }

  // A job page polls a small JSON endpoint; new events are appended, the summary, timeline and graph replaced.
  var live = document.querySelector("[data-updates]");
  if (!live) return;
  var after = live.getAttribute("data-after") || "";
  var every = parseInt(live.getAttribute("data-poll-ms"), 10) || 3000;
  var rows = document.getElementById("event-rows");
  var failures = 0;

  function say(text, paused) {
    live.textContent = "";
    var dot = document.createElement("span");
    dot.className = "dot";
    dot.setAttribute("aria-hidden", "true");
    live.appendChild(dot);
    live.appendChild(document.createTextNode(" " + text));
    live.classList.toggle("paused", !!paused);
  }

  function replace(id, html) {
    var el = document.getElementById(id);
    if (el && typeof html === "string") el.innerHTML = html;
  }

  function poll() {
    var url = new URL(live.getAttribute("data-updates"), window.location.href);
    if (after) url.searchParams.set("after", after);
    fetch(url.toString(), { credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (response.status === 401) { say("Signed out: reload the page to sign in again.", true); return null; }
        if (response.status === 404) { say("This job is gone.", true); return null; }
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      })
      .then(function (body) {
        if (body === null) return;
        failures = 0;
        if (body.count > 0) {
          // Server-rendered, autoescaped fragments of this same page.
          rows.insertAdjacentHTML("beforeend", body.rows);
          replace("summary-body", body.summary);
          replace("timeline", body.timeline);
          replace("graph", body.graph);
          var count = document.getElementById("event-count");
          if (count) count.textContent = "(" + body.total + ")";
          var added = rows.querySelectorAll("tr");
          for (var i = added.length - body.count; i < added.length; i++) if (added[i]) added[i].classList.add("fresh");
          refreshTimes(document);
          say(body.count + " new event" + (body.count === 1 ? "" : "s") + ": " + body.names.join(", ") +
              ". The job is " + body.state + ".");
        }
        after = body.after || after;
        setTimeout(poll, every);
      })
      .catch(function () {
        failures += 1;
        say("Cannot reach the server; retrying…", true);
        setTimeout(poll, Math.min(every * Math.pow(2, failures), 60000));
      });
  }
  setTimeout(poll, every);
})();

/* The VM page's dirty-rate chart: stored readings, then live ones. */
function DirtyRateLive(vmId) {
  "use strict";
  var seen = {};
  var canvas = document.getElementById("chart-dirty-rate");
  var chart = new Chart(canvas, {
    type: "line",
    data: { datasets: [{ label: "dirty rate (MiB/s)", data: [], borderColor: "#dc3545", backgroundColor: "#dc3545" }] },
    options: {
      animation: false, maintainAspectRatio: false, parsing: false,
      scales: { x: { type: "linear", title: { display: true, text: "minutes ago" }, reverse: false }, y: { beginAtZero: true } },
    },
  });
  var t0 = null;
  function add(s) {
    if (seen[s.id]) return;
    seen[s.id] = true;
    var t = Date.parse(s.measured_at) / 1000;
    if (t0 === null) t0 = t;
    chart.data.datasets[0].data.push({ x: (t - t0) / 60, y: s.dirty_rate_mib_s });
    document.getElementById("dirty-rate-latest").textContent = s.dirty_rate_mib_s.toFixed(1) + " MiB/s";
  }
  function row(s) {
    var body = document.getElementById("dirty-rate-history");
    var empty = body.querySelector("tr.empty");
    if (empty) empty.remove();
    var tr = document.createElement("tr");
    [new Date(s.measured_at).toLocaleString(), s.window_s + " s", s.mode, s.dirty_rate_mib_s.toFixed(2) + " MiB/s"].forEach(function (v) {
      var td = document.createElement("td"); td.textContent = v; tr.appendChild(td);
    });
    body.insertBefore(tr, body.firstChild);
  }
  JSON.parse(document.getElementById("dirty-rate-data").textContent).forEach(add);
  chart.options.scales.x.title.text = "minutes since first reading";
  chart.update("none");
  var status = document.getElementById("dirty-rate-status");
  function say(text, kind) {
    if (!status) return;
    status.textContent = text;
    status.className = "small mt-2 text-" + kind;
  }
  // In the migration wizard the form posts in the background, so the review stays on screen.
  var form = document.getElementById("dirty-rate-form");
  var measuring = false;
  if (form && form.dataset.inline) {
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      fetch(form.action, { method: "POST", body: new FormData(form), headers: { Accept: "application/json" }, credentials: "same-origin" })
        .then(function (r) { return r.json(); })
        .then(function (answer) {
          measuring = answer.ok;
          say(answer.message, answer.ok ? "muted" : "danger");
        })
        .catch(function () { say("The measurement could not be started; reload the page and try again.", "danger"); });
    });
  }
  function done(msg) {
    if (!measuring) return;
    measuring = false;
    say("Measured " + msg.count + " reading(s). Update the prediction to use them.", "success");
    var update = document.getElementById("update-prediction");
    if (update) update.classList.remove("d-none");
  }
  var delay = 500;
  function open() {
    var ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws/vms/" + vmId + "/dirty-rate/");
    ws.onopen = function () { delay = 500; };
    ws.onmessage = function (ev) {
      var msg = JSON.parse(ev.data);
      if (msg.type === "history") msg.samples.forEach(add);
      if (msg.type === "sample") { add(msg.sample); row(msg.sample); }
      if (msg.type === "done") done(msg);
      chart.update("none");
    };
    ws.onclose = function (ev) { if (ev.code !== 4403 && ev.code !== 4404) { setTimeout(open, delay); delay = Math.min(delay * 2, 15000); } };
  }
  open();
}

/* Live migration progress: one websocket per page, reconnecting with
 * back-off. The server sends the recorded history first, then live samples,
 * in the same JSON shape the page was rendered from. */
(function () {
  "use strict";
  var MIB = 1024 * 1024;

  function fmtMiB(bytes) { return (bytes / MIB).toFixed(1) + " MiB"; }
  function fmtS(ms) {
    if (ms === null || ms === undefined) return "—";
    var s = ms / 1000;
    return s < 60 ? s.toFixed(1) + " s" : Math.floor(s / 60) + " min " + Math.round(s % 60) + " s";
  }
  function text(id, value) { var el = document.getElementById(id); if (el) el.textContent = value; }

  // The review's predicted range of the total time, as time left now.
  function predictedLeft(prediction, elapsedMs) {
    var r = prediction && prediction.range;
    if (!r || r.low_s === undefined) return "";
    var left = function (s) { return Math.max(0, s * 1000 - (elapsedMs || 0)); };
    var low = r.low_s === null ? "?" : fmtS(left(r.low_s));
    var high = r.high_s === null ? "no end" : fmtS(left(r.high_s));
    return "predicted " + low + " – " + high + (r.too_close ? " (too close to call)" : "");
  }

  function socket(path, handlers) {
    var delay = 500, ws = null, closedByUs = false;
    var status = document.getElementById("live-status");
    function say(msg) { if (status) status.textContent = msg; }
    function open() {
      var proto = location.protocol === "https:" ? "wss://" : "ws://";
      ws = new WebSocket(proto + location.host + path);
      ws.onopen = function () { delay = 500; say("live"); };
      ws.onmessage = function (ev) {
        var msg = JSON.parse(ev.data);
        if (msg.type === "revoked") { say(msg.message); return; }
        handlers.message(msg);
      };
      ws.onclose = function (ev) {
        if (closedByUs || ev.code === 4404) { say(""); return; }
        if (ev.code === 4403) { if (!status || status.textContent.indexOf("reload") < 0) say("not allowed"); return; }
        say("connection lost; reconnecting in " + (delay / 1000).toFixed(1) + " s");
        setTimeout(open, delay);
        delay = Math.min(delay * 2, 15000);
      };
    }
    open();
    return { close: function () { closedByUs = true; if (ws) ws.close(); } };
  }

  /* Draws a dashed vertical line where a new pre-copy iteration starts, and a red one where an action landed. */
  var iterationMarks = {
    id: "iterationMarks",
    afterDatasetsDraw: function (chart) {
      var marks = chart.options.plugins.iterationMarks.marks || [];
      var ctx = chart.ctx, area = chart.chartArea, x = chart.scales.x;
      ctx.save();
      ctx.strokeStyle = "rgba(108,117,125,0.6)";
      ctx.setLineDash([4, 4]);
      ctx.fillStyle = "rgba(108,117,125,0.9)";
      ctx.font = "10px sans-serif";
      marks.forEach(function (m) {
        var px = x.getPixelForValue(m.t);
        if (px < area.left || px > area.right) return;
        ctx.strokeStyle = m.action ? "rgba(220,53,69,0.8)" : "rgba(108,117,125,0.6)";
        ctx.beginPath(); ctx.moveTo(px, area.top); ctx.lineTo(px, area.bottom); ctx.stroke();
        ctx.fillText(m.action ? m.label : "it " + m.iteration, px + 2, area.top + (m.action ? 22 : 10));
      });
      ctx.restore();
    },
  };

  function lineChart(canvasId, datasets) {
    var el = document.getElementById(canvasId);
    if (!el || !window.Chart) return null;
    return new Chart(el, {
      type: "line",
      data: { datasets: datasets },
      options: {
        animation: false, maintainAspectRatio: false, parsing: false, normalized: true,
        scales: { x: { type: "linear", title: { display: true, text: "seconds" } }, y: { beginAtZero: true } },
        elements: { point: { radius: 0 } },
        plugins: { iterationMarks: { marks: [] } },
      },
      plugins: [iterationMarks],
    });
  }

  function detail(id) {
    var state = JSON.parse(document.getElementById("migration-data").textContent);
    var samples = [];
    var seen = {};
    var disks = !!state.copies_disks;
    var rates = lineChart("chart-rates", [
      { label: "dirty rate", data: [], borderColor: "#dc3545", backgroundColor: "#dc3545" },
      { label: disks ? "memory throughput" : "throughput", data: [], borderColor: "#007bff", backgroundColor: "#007bff" },
    ].concat(disks ? [{ label: "disk throughput", data: [], borderColor: "#17a2b8", backgroundColor: "#17a2b8" }] : []));
    var remaining = lineChart("chart-remaining", [
      { label: "remaining", data: [], borderColor: "#28a745", backgroundColor: "#28a745", fill: false },
    ].concat(disks ? [{ label: "disks remaining", data: [], borderColor: "#17a2b8", backgroundColor: "#17a2b8", fill: false }] : []));
    var marks = [];

    /* Sizes and what is left of memory and disks in one reading. During
     * setup libvirt reports zeros (nothing is known yet, not nothing left),
     * and while the disks are mirrored before the first memory pass it counts
     * no memory at all: then all of the VM's memory is still to send. */
    function amounts(s) {
      var memoryUnsized = !s.memory_total_bytes && s.disk_total_bytes > 0;
      var memTotal = memoryUnsized ? state.memory_bytes : s.memory_total_bytes;
      var memLeft = memoryUnsized ? state.memory_bytes : s.memory_remaining_bytes;
      var extra = memoryUnsized ? state.memory_bytes : 0;
      return {
        sized: s.data_total_bytes > 0,
        memTotal: memTotal, memLeft: memLeft,
        diskTotal: s.disk_total_bytes, diskLeft: s.disk_remaining_bytes,
        total: s.data_total_bytes + extra, left: s.data_remaining_bytes + extra,
      };
    }

    function addSample(s) {
      // elapsed_ms alone is not unique: a final reading may repeat the last live one's.
      var key = s.elapsed_ms + "@" + s.sampled_at;
      if (seen[key]) return false;
      seen[key] = true;
      var last = samples[samples.length - 1];
      samples.push(s);
      var t = s.elapsed_ms / 1000;
      var a = amounts(s);
      if (last && s.iteration !== last.iteration) marks.push({ t: t, iteration: s.iteration });
      if (rates) {
        rates.data.datasets[0].data.push({ x: t, y: s.dirty_rate_mib_s });
        rates.data.datasets[1].data.push({ x: t, y: s.throughput_mib_s });
        if (disks) rates.data.datasets[2].data.push({ x: t, y: s.disk_throughput_mib_s || 0 });
      }
      if (remaining) {
        remaining.data.datasets[0].data.push({ x: t, y: a.sized ? a.left / MIB : null });
        if (disks) remaining.data.datasets[1].data.push({ x: t, y: a.sized ? a.diskLeft / MIB : null });
      }
      return true;
    }

    /* The operator's actions, applied by the worker, marked where they landed. */
    function actionMarks() {
      return (state.actions || []).filter(function (a) { return a.ok && a.elapsed_ms !== null; })
        .map(function (a) { return { t: a.elapsed_ms / 1000, label: a.label, action: true }; });
    }

    function redraw() {
      var all = marks.concat(actionMarks());
      [rates, remaining].forEach(function (c) { if (c) { c.options.plugins.iterationMarks.marks = all; c.update("none"); } });
      var s = samples[samples.length - 1];
      if (!s) return;
      document.getElementById("live-panel").classList.remove("d-none");
      var a = amounts(s);
      var done = state.state === "succeeded";
      var memPct = 0, diskPct = 0;
      if (a.total > 0) {
        // A record from before final readings were kept may end on a live one.
        var memLeft = done ? 0 : a.memLeft, diskLeft = done ? 0 : a.diskLeft;
        memPct = Math.max(0, 100 * (a.memTotal - memLeft) / a.total);
        diskPct = Math.max(0, 100 * (a.diskTotal - diskLeft) / a.total);
      } else if (done) memPct = 100;
      var pct = Math.min(100, memPct + diskPct);
      if (memPct + diskPct > 100) memPct = 100 - diskPct;
      var bar = document.getElementById("progress-memory");
      bar.style.width = memPct.toFixed(1) + "%";
      bar.textContent = a.diskTotal ? (memPct >= 8 ? "memory" : "") : pct.toFixed(0) + " %";
      bar.setAttribute("aria-valuenow", pct.toFixed(0));
      var dbar = document.getElementById("progress-disk");
      dbar.style.width = diskPct.toFixed(1) + "%";
      dbar.textContent = a.diskTotal && diskPct >= 8 ? "disks" : "";
      var diskText = a.diskTotal ? "; disks " + fmtMiB(a.diskTotal - a.diskLeft) + " copied of " + fmtMiB(a.diskTotal) : "";
      if (!state.in_flight) {
        text("progress-text", done ? "Complete: " + fmtMiB(state.data_processed_bytes || s.memory_processed_bytes) +
          " of memory sent" + (state.disk_total_bytes ? ", " + fmtMiB(state.disk_copied_bytes) + " of disks copied" : "") +
          ", in " + fmtS(state.total_time_ms) + "." : "Stopped at " + pct.toFixed(0) + " % (" + state.state_display.toLowerCase() + ")" + diskText + ".");
        text("stat-eta", "—");
      } else if (!a.sized) {
        text("progress-text", "setting up (libvirt has not sized the job yet)…");
      } else text("progress-text", fmtMiB(a.left) + " left of " + fmtMiB(a.total) + " (" + pct.toFixed(0) + " % done)" +
        (a.diskTotal ? "; memory " + fmtMiB(a.memTotal - a.memLeft) + " of " + fmtMiB(a.memTotal) : "") + diskText);
      text("stat-elapsed", fmtS(s.elapsed_ms));
      var speed = s.throughput_mib_s + (s.disk_throughput_mib_s || 0);
      var eta = a.sized && speed > 0 ? 1000 * (a.left / MIB) / speed : null;
      if (state.in_flight) text("stat-eta", eta === null ? "—" : "~" + fmtS(eta));
      text("stat-eta-range", state.in_flight ? predictedLeft(state.prediction, s.elapsed_ms) : "");
      text("stat-throughput", s.throughput_mib_s.toFixed(1) + " MiB/s");
      text("stat-disk-throughput", (s.disk_throughput_mib_s || 0).toFixed(1) + " MiB/s");
      text("stat-dirty", s.dirty_rate_mib_s.toFixed(1) + " MiB/s");
      text("stat-iteration", s.iteration);
      text("stat-remaining", done ? fmtMiB(0) : a.sized ? fmtMiB(a.left) : "—");
      if (done && state.iterations !== null) text("stat-iteration", state.iterations);
      text("stat-downtime", s.expected_downtime_ms === null ? "—" : s.expected_downtime_ms + " ms");
      text("stat-throttle", s.throttle_pct === null ? "—" : s.throttle_pct + " %");
    }

    /* The server judges convergence (migrator.live.convergence_warning); the page only shows its words. */
    function convergence(warning, advice) {
      var box = document.getElementById("not-converging");
      if (!state.in_flight || !warning) { box.classList.add("d-none"); return; }
      box.querySelector('[data-field="warning"]').textContent = warning;
      var form = document.getElementById("advice-form");
      if (form) {
        form.classList.toggle("d-none", !advice);
        if (advice) {
          form.querySelector('[name="kind"]').value = advice.kind;
          form.querySelector('[name="value"]').value = advice.value === null ? "" : advice.value;
          form.querySelector("button").textContent = advice.label;
          form.querySelector('[data-field="why"]').textContent = advice.why;
        }
      }
      box.classList.remove("d-none");
    }

    function stalled(seconds) {
      var box = document.getElementById("stalled");
      if (!state.in_flight || !seconds) { box.classList.add("d-none"); return; }
      box.textContent = "Nothing has moved for " + seconds + " s: " + state.source_name + " and " +
        state.destination_name + " may have lost each other. libvirt gives up after about 30 s without an answer.";
      box.classList.remove("d-none");
    }

    function controls(m) {
      var panel = document.getElementById("controls");
      if (panel) {
        var kinds = m.available_actions || [];
        panel.classList.toggle("d-none", !kinds.length);
        panel.querySelectorAll("form[data-kind]").forEach(function (f) {
          f.classList.toggle("d-none", kinds.indexOf(f.getAttribute("data-kind")) < 0);
        });
        var log = document.getElementById("action-log");
        log.innerHTML = "";
        (m.actions || []).forEach(function (a) {
          var li = document.createElement("li");
          li.textContent = a.label + " — " + a.requested_by + ": " + (a.ok === null ? "waiting for the worker" : a.result);
          log.appendChild(li);
        });
      }
      var cancel = document.getElementById("cancel-form");
      if (cancel && (m.postcopy_started || !m.in_flight)) cancel.classList.add("d-none");
      document.getElementById("interrupted").classList.toggle("d-none", m.state !== "interrupted");
      document.getElementById("attention").classList.toggle("d-none", m.state !== "attention");
      var notes = { interrupted_note: m.outcome_note || "", attention_note: m.outcome_note || "" };
      Object.keys(notes).forEach(function (k) {
        var el = document.querySelector('[data-field="' + k + '"]');
        if (el) el.textContent = notes[k];
      });
    }

    function showState(m) {
      state = m;
      convergence(m.convergence_warning, m.convergence_advice);
      controls(m);
      if (!m.in_flight) stalled(0);
      var badge = document.getElementById("state-badge");
      badge.className = "badge badge-" + m.badge;
      badge.textContent = m.state_display;
      var waiting = document.getElementById("waiting");
      if (waiting) {
        waiting.classList.toggle("d-none", !m.waiting);
        var reason = waiting.querySelector('[data-field="wait_reason"]');
        if (reason && m.waiting) reason.textContent = m.wait_reason || "for a free slot";
      }
      if (!m.in_flight) {
        var cancel = document.getElementById("cancel-form");
        if (cancel) cancel.classList.add("d-none");
        document.getElementById("not-converging").classList.add("d-none");
        var sum = document.getElementById("summary");
        sum.classList.remove("d-none");
        var set = function (field, value) { var el = sum.querySelector('[data-field="' + field + '"]'); if (el) el.textContent = value; };
        set("state_display", m.state_display);
        sum.querySelector(".badge").className = "badge badge-" + m.badge;
        set("outcome_note", m.outcome_note || "");
        set("error_message", m.error_message || "");
        set("libvirt_message", m.libvirt_message || "");
        set("total_time", m.total_time_ms === null ? "—" : m.total_time_ms + " ms");
        set("downtime", m.downtime_ms === null ? "—" : m.downtime_ms + " ms");
        set("data", m.data_text);
        set("disk_copy", m.disk_copy_text);
        set("iterations", m.iterations === null ? "—" : m.iterations);
        set("throughput", m.avg_throughput_mib_s ? m.avg_throughput_mib_s.toFixed(1) + " MiB/s" : "—");
        set("vm_location", m.vm_location || "—");
        if (m.state === "succeeded" && !samples.length) {
          var bar = document.getElementById("progress-memory");
          bar.style.width = "100%";
          bar.setAttribute("aria-valuenow", "100");
          bar.textContent = "100 %";
        }
        redraw();
        if (m.error_message && !sum.querySelector('[data-field="error_message"]')) {
          var div = document.createElement("div");
          div.className = "alert alert-danger";
          div.textContent = "What happened: " + m.error_message + (m.libvirt_message ? " (libvirt said: " + m.libvirt_message + ")" : "");
          sum.querySelector(".card-body").insertBefore(div, sum.querySelector("p"));
        }
      }
    }

    JSON.parse(document.getElementById("samples-data").textContent).forEach(addSample);
    redraw();
    convergence(state.convergence_warning, state.convergence_advice);
    controls(state);
    socket("/ws/migrations/" + id + "/", {
      message: function (msg) {
        if (msg.type === "history") {
          msg.samples.forEach(addSample);
          showState(msg.migration);
          redraw();
        } else if (msg.type === "sample") {
          if (addSample(msg.sample)) redraw();
          convergence(msg.convergence_warning, msg.convergence_advice);
          stalled(msg.sample.stalled_s);
        } else if (msg.type === "state") {
          showState(msg.migration);
          redraw();
        }
      },
    });
  }

  // The queue: waiting migrations in arrival order, numbered from 1.
  function queueTable(table) {
    var body = table ? table.querySelector("tbody") : null;
    function row(id) { return body ? body.querySelector('tr[data-id="' + id + '"]') : null; }
    function renumber() {
      if (!body) return;
      var rows = Array.prototype.slice.call(body.querySelectorAll("tr[data-id]"));
      rows.sort(function (a, b) { return Number(a.getAttribute("data-id")) - Number(b.getAttribute("data-id")); });
      rows.forEach(function (tr, i) { body.appendChild(tr); tr.querySelector(".position").textContent = i + 1; });
      var empty = body.querySelector("tr.empty");
      if (!rows.length && !empty) {
        empty = document.createElement("tr");
        empty.className = "empty";
        empty.innerHTML = '<td colspan="7" class="text-muted">No migration is waiting.</td>';
        body.appendChild(empty);
      } else if (rows.length && empty) { empty.remove(); }
    }
    return {
      update: function (m) {
        if (!body) return;
        var tr = row(m.id);
        if (!m.waiting) { if (tr) { tr.remove(); renumber(); } return; }
        if (!tr) {
          tr = document.createElement("tr");
          tr.setAttribute("data-id", m.id);
          tr.innerHTML = '<td class="position"></td><td><a></a></td><td class="vm"></td><td class="route"></td><td class="reason"></td><td class="asked"></td><td></td>';
          tr.querySelector("a").href = m.url;
          tr.querySelector("a").textContent = m.id;
          tr.querySelector(".vm").textContent = m.vm_name;
          tr.querySelector(".route").textContent = m.source_name + " → " + m.destination_name;
          tr.querySelector(".asked").textContent = m.created_at ? new Date(m.created_at).toLocaleString() : "";
          body.appendChild(tr);
        }
        tr.querySelector(".reason").textContent = m.wait_reason || "a free slot";
        renumber();
      },
      keep: function (ids) {
        if (!body) return;
        body.querySelectorAll("tr[data-id]").forEach(function (tr) { if (!ids[tr.getAttribute("data-id")]) tr.remove(); });
        renumber();
      },
    };
  }

  function list(table, queueElement) {
    var queue = queueTable(queueElement);
    var body = table.querySelector("tbody");
    function row(id) { return body.querySelector('tr[data-id="' + id + '"]'); }
    function ensureRow(m) {
      var tr = row(m.id);
      if (tr) return tr;
      var empty = body.querySelector("tr.empty");
      if (empty) empty.remove();
      tr = document.createElement("tr");
      tr.setAttribute("data-id", m.id);
      tr.innerHTML = '<td><a></a></td><td class="vm"></td><td class="route"></td><td class="state"><span class="badge"></span></td>' +
        '<td><div class="progress"><div class="progress-bar" role="progressbar" style="width:0%">0 %</div></div></td><td class="throughput">—</td><td class="dirty">—</td>';
      tr.querySelector("a").href = m.url;
      tr.querySelector("a").textContent = m.id;
      tr.querySelector(".vm").textContent = m.vm_name;
      tr.querySelector(".route").textContent = m.source_name + " → " + m.destination_name;
      body.appendChild(tr);
      return tr;
    }
    function count() { text("active-count", body.querySelectorAll("tr[data-id]").length); }
    function update(m) {
      queue.update(m);
      if (!m.active || m.waiting) { var tr = row(m.id); if (tr) tr.remove(); count(); return; }
      var r = ensureRow(m);
      var badge = r.querySelector(".state .badge");
      badge.className = "badge badge-" + m.badge;
      badge.textContent = m.state_display;
      if (m.last_sample) sample(m.id, m.last_sample);
      count();
    }
    function sample(id, s) {
      var r = row(id);
      if (!r) return;
      var pct = s.data_total_bytes ? Math.min(100, 100 * s.data_processed_bytes / s.data_total_bytes) : 0;
      var bar = r.querySelector(".progress-bar");
      bar.style.width = pct.toFixed(0) + "%";
      bar.textContent = pct.toFixed(0) + " %";
      r.querySelector(".throughput").textContent = s.throughput_mib_s.toFixed(1) + " MiB/s";
      r.querySelector(".dirty").textContent = s.dirty_rate_mib_s.toFixed(1) + " MiB/s";
    }
    socket("/ws/migrations/", {
      message: function (msg) {
        if (msg.type === "list") {
          var ids = {};
          msg.migrations.forEach(function (m) { ids[m.id] = true; update(m); });
          body.querySelectorAll("tr[data-id]").forEach(function (tr) { if (!ids[tr.getAttribute("data-id")]) tr.remove(); });
          queue.keep(ids);
          count();
        } else if (msg.type === "state") {
          update(msg.migration);
        } else if (msg.type === "sample") {
          sample(msg.id, msg.sample);
        }
      },
    });
  }

  // A batch's page: each of its migrations live, and the share that ended.
  function batch(table) {
    var body = table.querySelector("tbody");
    var ended = {};
    var total = body.querySelectorAll("tr").length;
    function bar() {
      var done = Object.keys(ended).filter(function (k) { return ended[k]; }).length;
      var el = document.getElementById("batch-progress");
      el.style.width = (total ? 100 * done / total : 0).toFixed(0) + "%";
      el.textContent = done + " / " + total;
      if (done === total && total) { window.setTimeout(function () { window.location.reload(); }, 1500); }
    }
    function update(m) {
      var tr = body.querySelector('tr[data-id="' + m.id + '"]');
      if (!tr) return;
      var badge = tr.querySelector(".state .badge");
      badge.className = "badge badge-" + m.badge;
      badge.textContent = m.state_display;
      var reason = tr.querySelector(".reason");
      if (reason) reason.textContent = m.waiting ? (m.wait_reason || "") : "";
      if (m.total_time_ms !== null) tr.querySelector(".actual").textContent = (m.total_time_ms / 1000).toFixed(1) + " s";
      if (m.downtime_ms !== null) tr.querySelector(".actual-downtime").textContent = m.downtime_ms + " ms";
      if (m.vm_location) tr.querySelector(".where").textContent = m.vm_location;
      if (m.state === "succeeded") sample(m.id, null, 100);
      ended[m.id] = !m.active;
      bar();
    }
    function sample(id, s, pct) {
      var tr = body.querySelector('tr[data-id="' + id + '"]');
      if (!tr) return;
      if (pct === undefined) pct = s && s.data_total_bytes ? Math.min(100, 100 * s.data_processed_bytes / s.data_total_bytes) : 0;
      tr.querySelector(".progress-bar").style.width = pct.toFixed(0) + "%";
    }
    JSON.parse(document.getElementById("batch-data").textContent).forEach(update);
    socket("/ws/migrations/", {
      message: function (msg) {
        if (msg.type === "list") msg.migrations.forEach(update);
        else if (msg.type === "state") update(msg.migration);
        else if (msg.type === "sample") sample(msg.id, msg.sample);
      },
    });
  }

  window.MigrationLive = { detail: detail, list: list, batch: batch };
})();

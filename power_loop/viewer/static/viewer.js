// power-loop session viewer. Everything from the store is untrusted: it enters the page only
// as text (text nodes, textContent, attribute values), never as HTML.
"use strict";

(function () {
  const app = document.getElementById("app");
  const SVG = "http://www.w3.org/2000/svg";

  // el("td", {class: "num"}, "text", childNode, ...): strings become text nodes.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "onclick" || key === "oninput" || key === "onchange") node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    return node;
  }

  function time(ms) {
    if (ms === null || ms === undefined) return "";
    return new Date(ms).toISOString().replace("T", " ").slice(0, 19);
  }

  function duration(start, end) {
    if (!start || !end) return "";
    const s = (end - start) / 1000;
    return s < 60 ? s.toFixed(1) + " s" : (s / 60).toFixed(1) + " min";
  }

  function num(n) {
    return n === null || n === undefined ? "" : Number(n).toLocaleString("en-US");
  }

  function status(text) {
    if (!text) return "";
    return el("span", { class: "status status-" + String(text).replace(/[^a-z_-]/gi, "") }, text);
  }

  function metadataText(meta) {
    return Object.entries(meta || {}).map(([k, v]) => k + "=" + (typeof v === "string" ? v : JSON.stringify(v))).join(", ");
  }

  async function getJSON(path) {
    const response = await fetch(path, { credentials: "same-origin", headers: { Accept: "application/json" } });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(body.error || response.status + " " + response.statusText);
    return body;
  }

  function showError(where, error) {
    where.replaceChildren(el("p", { class: "error" }, String(error.message || error)));
  }

  // ---- sessions list -------------------------------------------------------------------

  const ACTIVE = [["", "any time"], ["1h", "last hour"], ["24h", "last 24 h"], ["7d", "last 7 days"], ["30d", "last 30 days"]];
  const ORDERS = [["last_active", "last active"], ["created", "created"], ["id", "id"], ["tokens", "tokens"]];
  const KINDS = [["", "any kind"], ["main", "main"], ["subagent", "subagent"]];
  const PAGE = 50;

  function options(pairs, selected) {
    return pairs.map(([value, label]) => el("option", { value: value, selected: value === selected }, label));
  }

  function renderSessionsPage() {
    const params = new URLSearchParams(location.search);
    const search = el("input", { type: "search", id: "search", name: "search", placeholder: "session id or metadata", value: params.get("search") || "" });
    const kind = el("select", { id: "kind", name: "kind" }, options(KINDS, params.get("kind") || ""));
    const metadata = el("input", { type: "text", id: "metadata", name: "metadata", placeholder: "key=value, key=value", value: params.getAll("metadata").join(", ") });
    const active = el("select", { id: "active", name: "active" }, options(ACTIVE, params.get("active") || ""));
    const order = el("select", { id: "order", name: "order" }, options(ORDERS, params.get("order") || "last_active"));
    const results = el("div", { id: "sessions" });
    let offset = Number(params.get("offset") || 0);
    let timer = null;

    function query() {
      const q = new URLSearchParams();
      if (search.value.trim()) q.set("search", search.value.trim());
      if (kind.value) q.set("kind", kind.value);
      for (const item of metadata.value.split(",")) if (item.trim()) q.append("metadata", item.trim());
      if (active.value) q.set("active", active.value);
      if (order.value !== "last_active") q.set("order", order.value);
      return q;
    }

    async function load() {
      const q = query();
      if (offset) q.set("offset", String(offset));
      history.replaceState(null, "", q.toString() ? "?" + q.toString() : location.pathname);
      q.set("limit", String(PAGE));
      results.setAttribute("aria-busy", "true");
      try {
        const data = await getJSON("api/sessions?" + q.toString());
        results.replaceChildren(sessionsTable(data), pager(data));
      } catch (error) {
        showError(results, error);
      }
      results.removeAttribute("aria-busy");
    }

    function reload(delay) {
      offset = 0;
      clearTimeout(timer);
      timer = setTimeout(load, delay);
    }

    function pager(data) {
      const first = data.total ? data.offset + 1 : 0;
      const last = data.offset + data.sessions.length;
      const prev = el("button", { id: "prev", disabled: data.offset === 0, onclick: () => { offset = Math.max(0, offset - PAGE); load(); } }, "‹ previous");
      const next = el("button", { id: "next", disabled: last >= data.total, onclick: () => { offset += PAGE; load(); } }, "next ›");
      return el("div", { class: "pager" }, prev, el("span", { id: "count" }, first + "–" + last + " of " + data.total), next);
    }

    search.addEventListener("input", () => reload(250));
    metadata.addEventListener("input", () => reload(400));
    for (const control of [kind, active, order]) control.addEventListener("change", () => reload(0));

    app.replaceChildren(
      el("h1", {}, "Sessions"),
      el("div", { class: "filters", role: "search" },
        el("label", {}, "Search", search), el("label", {}, "Kind", kind), el("label", {}, "Metadata", metadata),
        el("label", {}, "Active", active), el("label", {}, "Sort by", order)),
      results,
    );
    document.title = "power-loop sessions";
    load();
  }

  function sessionsTable(data) {
    if (!data.sessions.length) return el("p", { class: "muted", id: "no-sessions" }, "No session matches.");
    const head = el("tr", {}, ["Session", "Kind", "Parent", "Created", "Last active", "Messages", "Runs", "Last status", "Pending calls", "Timers", "Tokens in / out", "Metadata"]
      .map((h, i) => el("th", { class: i >= 5 && i !== 7 && i < 11 ? "num" : null }, h)));
    const rows = data.sessions.map((s) => el("tr", { "data-session": s.session_id },
      el("td", { class: "id" }, el("a", { href: "session?id=" + encodeURIComponent(s.session_id) }, s.session_id)),
      el("td", {}, s.kind),
      el("td", { class: "id" }, s.parent_session_id ? el("a", { href: "session?id=" + encodeURIComponent(s.parent_session_id) }, s.parent_session_id) : ""),
      el("td", {}, time(s.created_at)),
      el("td", {}, time(s.last_active_at)),
      el("td", { class: "num" }, num(s.messages)),
      el("td", { class: "num" }, num(s.runs)),
      el("td", {}, status(s.last_status)),
      el("td", { class: "num" }, num(s.pending_calls)),
      el("td", { class: "num" }, num(s.armed_timers)),
      el("td", { class: "num" }, num(s.input_tokens) + " / " + num(s.output_tokens)),
      el("td", {}, metadataText(s.metadata)),
    ));
    return el("table", { id: "sessions-table" }, el("thead", {}, head), el("tbody", {}, rows));
  }

  // ---- one session ---------------------------------------------------------------------

  function prettyArguments(args) {
    if (typeof args === "string") {
      try { return JSON.stringify(JSON.parse(args), null, 2); } catch (e) { return args; }
    }
    return JSON.stringify(args, null, 2);
  }

  function entryText(entry) {
    if (entry.content !== null && entry.content !== undefined) return String(entry.content);
    const content = entry.message && entry.message.content;
    if (content === null || content === undefined || content === "") return "";
    return typeof content === "string" ? content : JSON.stringify(content, null, 2);
  }

  function renderSessionPage() {
    const sid = new URLSearchParams(location.search).get("id") || "";
    const calls = new Map(); // tool call id -> the <pre> its result goes in
    const seen = new Set();
    let lastSeq = 0;
    let source = null;
    const live = el("span", { class: "live", id: "live" }, "connecting…");
    const header = el("div", { id: "session-head" });
    const showCompacted = el("input", { type: "checkbox", id: "show-compacted", checked: true });
    let transcript = el("ol", { class: "transcript", id: "transcript" });
    const runs = el("div", { id: "runs" });
    const chart = el("div", { class: "chart", id: "chart" });
    const timers = el("div", { id: "timers" });

    showCompacted.addEventListener("change", () => document.getElementById("transcript").classList.toggle("hide-compacted", !showCompacted.checked));

    function addEntry(entry) {
      // A compaction summary carries the seq of the last message it folds.
      const key = (entry.is_summary ? "summary-" : "message-") + entry.seq;
      if (seen.has(key)) return;
      seen.add(key);
      lastSeq = Math.max(lastSeq, entry.seq);
      if (entry.role === "tool" && entry.tool_call_id && calls.has(entry.tool_call_id)) {
        const slot = calls.get(entry.tool_call_id);
        slot.textContent = entryText(entry);
        slot.classList.remove("muted");
        return;
      }
      const badges = [];
      if (entry.is_summary) badges.push(el("span", { class: "badge" }, "compaction summary"));
      if (entry.compacted) badges.push(el("span", { class: "badge" }, "compacted"));
      const classes = ["role-" + String(entry.role).replace(/[^a-z_-]/gi, "")];
      if (entry.compacted) classes.push("compacted");
      if (entry.is_summary) classes.push("summary");
      const item = el("li", { class: classes.join(" "), "data-seq": entry.seq, id: key },
        el("div", { class: "entry-head" },
          el("span", { class: "role" }, entry.role === "tool" ? "tool result" + (entry.name ? " · " + entry.name : "") : entry.role),
          el("span", {}, "#" + entry.seq), el("span", {}, time(entry.created_at)), badges),
      );
      const text = entryText(entry);
      if (text) item.append(el("div", { class: "content" }, text));
      for (const call of entry.tool_calls || []) {
        const result = el("pre", { class: "result muted" }, "(no result yet)");
        if (call.id) calls.set(call.id, result);
        item.append(el("details", { class: "tool-call", "data-call-id": call.id || "" },
          el("summary", {}, "tool call · " + call.name),
          el("div", {},
            el("div", { class: "label" }, "Arguments"), el("pre", { class: "arguments" }, prettyArguments(call.arguments)),
            el("div", { class: "label" }, "Result"), result)));
      }
      transcript.append(item);
    }

    // The whole transcript again (after a compaction folded rows already shown), or the rest.
    async function loadTranscript(again) {
      let after = again ? 0 : lastSeq;
      const fresh = again ? el("ol", { class: transcript.className, id: "transcript" }) : transcript;
      if (again) { seen.clear(); calls.clear(); }
      const target = transcript;
      if (again) transcript = fresh;
      for (;;) {
        const page = await getJSON("api/transcript?id=" + encodeURIComponent(sid) + "&after_seq=" + after + "&limit=500");
        page.entries.forEach(addEntry);
        if (page.entries.length < 500) break;
        after = page.entries[page.entries.length - 1].seq;
      }
      if (again) target.replaceWith(fresh);
    }

    function renderHeader(session) {
      const parts = [
        ["Kind", session.kind], ["Created", time(session.created_at)], ["Last active", time(session.last_active_at)],
        ["Messages", num(session.messages)], ["Runs", num(session.runs)], ["Last status", session.last_status],
        ["Pending calls", num(session.pending_calls)], ["Metadata", metadataText(session.metadata)],
      ].filter(([, v]) => v !== undefined && v !== null && v !== "");
      const meta = el("div", { class: "meta" }, parts.map(([k, v]) => el("span", {}, k + ": ", el("b", {}, v))));
      if (session.parent_session_id) {
        meta.append(el("span", {}, "Parent: ", el("a", { href: "session?id=" + encodeURIComponent(session.parent_session_id) }, session.parent_session_id)));
      }
      header.replaceChildren(el("h1", {}, session.session_id, " ", live), meta);
    }

    function renderRuns(list) {
      if (!list.length) {
        runs.replaceChildren(el("p", { class: "muted" }, "No runs yet."));
        chart.replaceChildren();
        return;
      }
      const head = el("tr", {}, ["Run", "Kind", "Status", "Started", "Duration", "LLM calls", "Input tokens", "Output tokens", "Error"]
        .map((h, i) => el("th", { class: i >= 5 && i <= 7 ? "num" : null }, h)));
      const rows = list.map((r) => el("tr", { "data-run": r.run_id },
        el("td", { class: "id" }, r.run_id), el("td", {}, r.kind || ""), el("td", {}, status(r.status)),
        el("td", {}, time(r.started_at)), el("td", {}, duration(r.started_at, r.ended_at)),
        el("td", { class: "num" }, num(r.llm_calls !== undefined ? r.llm_calls : r.rounds)),
        el("td", { class: "num" }, num(r.input_tokens)), el("td", { class: "num" }, num(r.output_tokens)),
        el("td", { class: "error" }, r.error || "")));
      runs.replaceChildren(el("table", { id: "runs-table" }, el("thead", {}, head), el("tbody", {}, rows)));
      chart.replaceChildren(tokenChart(list));
    }

    function renderTimers(report) {
      const table = (rows, id) => {
        if (!rows.length) return el("p", { class: "muted", id: id }, "None.");
        const head = el("tr", {}, ["Timer", "Status", "Due", "Schedule", "Fired", "Last outcome", "Note"].map((h) => el("th", {}, h)));
        return el("table", { id: id }, el("thead", {}, head), el("tbody", {}, rows.map((t) => el("tr", {},
          el("td", {}, "#" + t.timer_id), el("td", {}, status(t.status)), el("td", {}, time(t.due_at)),
          el("td", {}, t.cron ? t.cron + " (" + (t.tz || "UTC") + ")" : t.every_s ? "every " + t.every_s + " s" : ""),
          el("td", { class: "num" }, num(t.fire_count)),
          el("td", {}, t.last_outcome || ""), el("td", {}, t.note)))));
      };
      timers.replaceChildren(el("h3", {}, "Active"), table(report.active, "timers-active"), el("h3", {}, "Recent"), table(report.recent, "timers-recent"));
    }

    function setLive(on, text) {
      live.classList.toggle("on", on);
      live.textContent = text;
    }

    function connect() {
      source = new EventSource("api/live?id=" + encodeURIComponent(sid) + "&after_seq=" + lastSeq);
      source.addEventListener("open", () => setLive(true, "live"));
      source.addEventListener("message", (e) => addEntry(JSON.parse(e.data)));
      source.addEventListener("runs", (e) => renderRuns(JSON.parse(e.data)));
      source.addEventListener("timers", (e) => renderTimers(JSON.parse(e.data)));
      source.addEventListener("compacted", () => loadTranscript(true));
      source.addEventListener("closed", (e) => { source.close(); setLive(false, JSON.parse(e.data).reason); });
      source.addEventListener("error", () => {
        if (source.readyState === EventSource.CLOSED) return;
        source.close();
        setLive(false, "reconnecting…");
        setTimeout(connect, 2000);
      });
    }

    app.replaceChildren(
      el("p", {}, el("a", { href: "./" }, "← all sessions")),
      header,
      el("h2", {}, "Transcript ", el("label", { class: "muted" }, showCompacted, " show compacted")),
      transcript,
      el("h2", {}, "Runs"), runs,
      el("h2", {}, "Tokens per run"),
      el("div", { class: "legend" }, el("span", {}, el("span", { class: "swatch in" }), "input"), el("span", {}, el("span", { class: "swatch out" }), "output")),
      chart,
      el("h2", {}, "Timers"), timers,
    );
    document.title = sid + " · power-loop";

    (async () => {
      try {
        const detail = await getJSON("api/session?id=" + encodeURIComponent(sid));
        renderHeader(detail.session);
        renderRuns(detail.runs);
        renderTimers(detail.timers);
        await loadTranscript(false);
        connect();
      } catch (error) {
        showError(app, error);
      }
    })();
  }

  // Stacked bars (input below, output above) per run, drawn as SVG in the page.
  function tokenChart(list) {
    const width = 900, height = 240, left = 56, bottom = 28, top = 12, right = 12;
    const max = Math.max(1, ...list.map((r) => (r.input_tokens || 0) + (r.output_tokens || 0)));
    const plotW = width - left - right, plotH = height - top - bottom;
    const step = plotW / list.length;
    const bar = Math.max(2, Math.min(48, step * 0.7));
    const scale = (v) => (v / max) * plotH;
    const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", id: "token-chart", "aria-label": "tokens per run" });
    root.append(svg("line", { class: "axis", x1: left, y1: top + plotH, x2: width - right, y2: top + plotH }));
    for (const frac of [0, 0.5, 1]) {
      const y = top + plotH - frac * plotH;
      root.append(svg("line", { class: "axis", x1: left - 4, y1: y, x2: width - right, y2: y }));
      root.append(svg("text", { x: left - 8, y: y + 4, "text-anchor": "end" }, num(Math.round(max * frac))));
    }
    list.forEach((r, i) => {
      const x = left + i * step + (step - bar) / 2;
      const inH = scale(r.input_tokens || 0), outH = scale(r.output_tokens || 0);
      const group = svg("g", { class: "run-bar", "data-run": r.run_id });
      group.append(svg("title", {}, `run ${i + 1} (${r.status}): ${num(r.input_tokens)} in, ${num(r.output_tokens)} out`));
      group.append(svg("rect", { class: "bar-in", x: x, y: top + plotH - inH, width: bar, height: inH }));
      group.append(svg("rect", { class: "bar-out", x: x, y: top + plotH - inH - outH, width: bar, height: outH }));
      if (list.length <= 40) group.append(svg("text", { x: x + bar / 2, y: height - 10, "text-anchor": "middle" }, String(i + 1)));
      root.append(group);
    });
    return root;
  }

  if (location.pathname.endsWith("/session")) renderSessionPage();
  else renderSessionsPage();
})();

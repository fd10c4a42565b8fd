/*
 * The task page's live output tail (docs/task-output.md, "The live tail").
 *
 * A websocket (/ws/admin/tasks/{id}/output/) sends the attempt's chunks after a cursor, then each new
 * chunk as it is stored. Chunks are joined as bytes (one UTF-8 decoder over the stream: a character may
 * be split across two chunks), then ANSI SGR codes become styled spans: the 16 colours (foreground and
 * background) and bold. Every other escape sequence and control character is removed. Text only ever
 * goes into the page through textContent, never innerHTML: a "<script>" the task printed stays text.
 *
 * Auto-scroll: the box follows the end while the reader is at its bottom; scrolling up pauses it
 * ("paused — N new lines", resume). A reconnect resumes from the cursor: nothing twice, nothing lost.
 */
(function () {
  "use strict";

  const REFUSED = 4403;
  const NOT_FOUND = 4404;
  const BACKOFF_MS = [500, 1000, 2000, 4000, 8000, 15000];
  const MAX_NODES = 20000; // spans kept in the box; older ones leave (the download has everything)
  const BOTTOM_SLACK_PX = 8;

  // --- the ANSI renderer (pure: tested in tests/browser/test_task_output_tail.py) -----------------------

  // CSI sequences (ESC [ params final), OSC (ESC ] ... BEL or ESC \), charset choices (ESC ( B), other two-byte escapes.
  // eslint-disable-next-line no-control-regex
  const ESCAPE = /\x1b\[([0-9;:?<=>]*)[ -\/]*([@-~])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[()*+#%][ -~]?|\x1b[0-~]|\x1b/g;
  // Control characters other than newline and tab (a carriage return would garble the lines: removed too).
  // eslint-disable-next-line no-control-regex
  const CONTROL = /[\x00-\x08\x0b-\x1f\x7f]/g;
  // An escape sequence cut at the end of a chunk: kept for the next one.
  // eslint-disable-next-line no-control-regex
  const UNFINISHED = /\x1b(\[[0-9;:?<=>]*[ -\/]*|\][^\x07\x1b]*|[()*+#%])?$/;

  function freshStyle() {
    return { fg: null, bg: null, bold: false };
  }

  function applySgr(style, params) {
    const codes = params === "" ? [0] : params.split(/[;:]/).map(function (p) { return p === "" ? 0 : Number(p); });
    for (let i = 0; i < codes.length; i++) {
      const code = codes[i];
      if (code === 0) {
        style.fg = null; style.bg = null; style.bold = false;
      } else if (code === 1) {
        style.bold = true;
      } else if (code === 22) {
        style.bold = false;
      } else if (code >= 30 && code <= 37) {
        style.fg = code - 30;
      } else if (code >= 90 && code <= 97) {
        style.fg = code - 90 + 8;
      } else if (code === 39) {
        style.fg = null;
      } else if (code >= 40 && code <= 47) {
        style.bg = code - 40;
      } else if (code >= 100 && code <= 107) {
        style.bg = code - 100 + 8;
      } else if (code === 49) {
        style.bg = null;
      } else if (code === 38 || code === 48) {
        // 256 colours (5;n) or RGB (2;r;g;b): not rendered, their arguments skipped.
        i += codes[i + 1] === 5 ? 2 : codes[i + 1] === 2 ? 4 : 0;
      }
    }
  }

  function classesOf(style) {
    const classes = [];
    if (style.fg !== null) { classes.push("ansi-fg-" + style.fg); }
    if (style.bg !== null) { classes.push("ansi-bg-" + style.bg); }
    if (style.bold) { classes.push("ansi-bold"); }
    return classes;
  }

  /*
   * A renderer keeps the style and an unfinished escape between calls. render(text) returns the
   * segments [{text, classes}] of plain text with the classes they are to be shown with.
   */
  function AnsiRenderer() {
    this.style = freshStyle();
    this.pending = "";
  }

  AnsiRenderer.prototype.render = function (input) {
    let text = this.pending + input;
    this.pending = "";
    const cut = UNFINISHED.exec(text);
    if (cut && cut[0].length < 64) {
      this.pending = cut[0];
      text = text.slice(0, cut.index);
    }
    const segments = [];
    let last = 0;
    const push = (piece) => {
      const clean = piece.replace(CONTROL, "");
      if (clean) { segments.push({ text: clean, classes: classesOf(this.style) }); }
    };
    ESCAPE.lastIndex = 0;
    let match;
    while ((match = ESCAPE.exec(text)) !== null) {
      push(text.slice(last, match.index));
      if (match[2] === "m" && match[0].charAt(1) === "[" && !/[?<=>]/.test(match[1] || "")) {
        applySgr(this.style, match[1] || "");
      }
      last = ESCAPE.lastIndex;
    }
    push(text.slice(last));
    return segments;
  };

  window.AegisAnsi = { Renderer: AnsiRenderer };

  // --- the tail ------------------------------------------------------------------------------------------

  function bytesOf(chunk) {
    if (chunk.encoding === "base64") {
      const raw = atob(chunk.data);
      const bytes = new Uint8Array(raw.length);
      for (let i = 0; i < raw.length; i++) { bytes[i] = raw.charCodeAt(i); }
      return bytes;
    }
    return new TextEncoder().encode(chunk.data);
  }

  function Tail(root) {
    this.root = root;
    this.box = root.querySelector("#task-output-lines");
    this.status = root.querySelector("#task-output-status");
    this.select = root.querySelector("#task-output-attempt");
    this.only = root.querySelector("#task-output-attempt-only");
    this.download = root.querySelector("#task-output-download");
    this.paused = root.querySelector("#task-output-paused");
    this.pausedText = root.querySelector("#task-output-paused-text");
    this.skippedNote = root.querySelector("#task-output-skipped");
    this.attempt = Number(root.dataset.attempt);
    this.following = true;
    this.socket = null;
    this.failures = 0;
    this.reset();
    this.box.addEventListener("scroll", () => this.onScroll());
    root.querySelector("#task-output-resume").addEventListener("click", () => this.resume());
    this.select.addEventListener("change", () => this.switchTo(Number(this.select.value)));
  }

  Tail.prototype.reset = function () {
    this.cursor = 0;
    this.decoder = new TextDecoder("utf-8");
    this.renderer = new AnsiRenderer();
    this.newLines = 0;
    this.dropped = false;
    this.box.replaceChildren();
    this.skippedNote.hidden = true;
    this.download.href = this.root.dataset.download + "?download=1&attempt=" + this.attempt;
  };

  Tail.prototype.connect = function () {
    const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
    const url = scheme + "//" + window.location.host + this.root.dataset.socket +
      "?attempt=" + this.attempt + "&after_seq=" + this.cursor;
    const socket = new WebSocket(url);
    this.socket = socket;
    socket.addEventListener("open", () => { this.failures = 0; });
    socket.addEventListener("message", (event) => {
      if (socket === this.socket) { this.onMessage(JSON.parse(event.data)); }
    });
    socket.addEventListener("close", (event) => {
      if (socket !== this.socket) { return; } // replaced: another attempt was chosen
      if (event.code === REFUSED) { this.status.textContent = "disconnected — log in again"; return; }
      if (event.code === NOT_FOUND) { this.status.textContent = "this task no longer exists"; return; }
      this.status.textContent = "disconnected — retrying";
      const delay = BACKOFF_MS[Math.min(this.failures, BACKOFF_MS.length - 1)];
      this.failures += 1;
      window.setTimeout(() => { if (socket === this.socket) { this.connect(); } }, delay);
    });
  };

  Tail.prototype.switchTo = function (attempt) {
    this.attempt = attempt;
    const old = this.socket;
    this.socket = null;
    if (old) { old.close(); }
    this.reset();
    this.resume();
    this.connect();
  };

  Tail.prototype.onMessage = function (message) {
    if (message.type !== "output" || message.attempt !== this.attempt) { return; }
    if (message.skipped) {
      this.skippedNote.textContent = "The first " + message.skipped + " chunks are not shown here: download the whole output.";
      this.skippedNote.hidden = false;
    }
    this.showAttempts(message.attempts);
    let lines = 0;
    for (const chunk of message.chunks) {
      const text = this.decoder.decode(bytesOf(chunk), { stream: true });
      lines += this.append(text, chunk.stream);
    }
    this.cursor = message.after_seq;
    let status = message.state + " · " + message.max_seq + " chunks";
    if (message.missing) { status += " · " + message.missing + " missing (a resend may fill them)"; }
    if (message.truncated_at !== null) { status += " · truncated at " + message.truncated_at + " bytes"; }
    this.status.textContent = status;
    if (this.following) {
      this.box.scrollTop = this.box.scrollHeight;
    } else {
      this.newLines += lines;
      this.pausedText.textContent = "paused — " + this.newLines + " new line" + (this.newLines === 1 ? "" : "s");
    }
  };

  Tail.prototype.append = function (text, stream) {
    const fragment = document.createDocumentFragment();
    let lines = 0;
    for (const segment of this.renderer.render(text)) {
      const span = document.createElement("span");
      span.className = ["out-" + stream].concat(segment.classes).join(" ");
      span.textContent = segment.text; // never innerHTML: the task's text stays text
      fragment.appendChild(span);
      lines += segment.text.split("\n").length - 1;
    }
    this.box.appendChild(fragment);
    while (this.box.childNodes.length > MAX_NODES) {
      this.box.removeChild(this.box.firstChild);
      if (!this.dropped) {
        this.dropped = true;
        this.skippedNote.textContent = "Earlier output left the view: download the whole output.";
        this.skippedNote.hidden = false;
      }
    }
    return lines;
  };

  Tail.prototype.showAttempts = function (attempts) {
    const known = new Set(Array.from(this.select.options).map(function (o) { return Number(o.value); }));
    for (const attempt of attempts) {
      if (!known.has(attempt)) {
        const option = document.createElement("option");
        option.value = String(attempt);
        option.textContent = String(attempt);
        this.select.appendChild(option);
      }
    }
    if (this.select.options.length > 1) {
      this.select.hidden = false;
      this.only.hidden = true;
    }
  };

  Tail.prototype.atBottom = function () {
    return this.box.scrollHeight - this.box.scrollTop - this.box.clientHeight <= BOTTOM_SLACK_PX;
  };

  Tail.prototype.onScroll = function () {
    if (this.atBottom()) {
      this.following = true;
      this.newLines = 0;
      this.paused.hidden = true;
    } else if (this.following) {
      this.following = false;
      this.newLines = 0;
      this.pausedText.textContent = "paused — 0 new lines";
      this.paused.hidden = false;
    }
  };

  Tail.prototype.resume = function () {
    this.following = true;
    this.newLines = 0;
    this.paused.hidden = true;
    this.box.scrollTop = this.box.scrollHeight;
  };

  function start() {
    const root = document.getElementById("task-output");
    if (root && typeof WebSocket !== "undefined") {
      const tail = new Tail(root);
      window.AegisOutputTail = tail;
      tail.connect();
    }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();

// Sluice console. Starts a stream with POST /v1/streams and reads GET /v1/streams/{id}/events with fetch()
// rather than EventSource, which cannot send the Authorization header; after a drop it reconnects with
// Last-Event-ID itself and drops any event it has already seen (by seq). The answer is rendered as sanitized
// markdown at most once per animation frame, and only its unfinished last block is re-rendered each time.
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // MARK: Markdown, sanitizing and highlighting (Debian's libjs-marked, node-dompurify, libjs-highlight.js)

  // Whether a vendor library loaded and works: a broken build must not leave the page half-rendering.
  function works(probe) {
    try {
      return probe();
    } catch (error) {
      console.error('console: a vendor library failed its self-test:', error);
      return false;
    }
  }

  const hasMarked = works(() => window.marked.parse('*x*').includes('<em>'));
  const purifyProbe = () => window.DOMPurify.sanitize('<b>x</b><script>x()</script>') === '<b>x</b>';
  // Debian 12's node-dompurify (2.4.1+dfsg-2+deb12u1) backported the CVE-2024-47875 nesting-depth check
  // into sanitize() with a variable declared only in _sanitizeShadowDOM, so sanitizing any markup throws
  // "shadowNode is not defined". sanitize() still checks the depth of every node it visits; a global at
  // depth 0 turns the misplaced copy into a no-op. The probe then decides whether DOMPurify is usable.
  if (window.DOMPurify && !('shadowNode' in window)) {
    try {
      purifyProbe();
    } catch (error) {
      if (error instanceof ReferenceError && /shadowNode/.test(error.message)) window.shadowNode = { __depth: 0 };
    }
  }
  const hasPurify = works(purifyProbe);
  const hasMarkdown = hasMarked && hasPurify;
  const hljs = window.hljs;
  // highlightElement since highlight.js 11; Debian 12 ships 9.18, which has highlightBlock.
  const highlight = hljs && (hljs.highlightElement || hljs.highlightBlock);
  // id and name could clobber globals and this page's own elements; style would only trip the CSP.
  const purifyOptions = { FORBID_TAGS: ['style', 'form'], FORBID_ATTR: ['style', 'id', 'name'] };

  if (hasMarkdown) {
    window.marked.setOptions({ gfm: true, headerIds: false, mangle: false });
    // Links open elsewhere, so following one does not lose the stream.
    window.DOMPurify.addHook('afterSanitizeAttributes', (node) => {
      if (node.tagName === 'A' && node.hasAttribute('href')) {
        node.setAttribute('target', '_blank');
        node.setAttribute('rel', 'noopener noreferrer');
      }
    });
  }
  if (highlight) {
    // Auto-detection tries every listed language: keep the list to common ones so that it stays cheap.
    hljs.configure({ languages: ['bash', 'c', 'cpp', 'css', 'go', 'java', 'javascript', 'json', 'python', 'rust', 'sql', 'swift', 'typescript', 'xml', 'yaml'] });
  }

  function showNotice() {
    const missing = [];
    if (!hasMarked) missing.push('marked (libjs-marked)');
    if (!hasPurify) missing.push('DOMPurify (node-dompurify)');
    if (!highlight) missing.push('highlight.js (libjs-highlight.js)');
    if (missing.length === 0) return;
    const consequence = hasMarkdown
      ? 'code blocks are not highlighted'
      : 'answers are shown as plain, escaped text instead of markdown';
    const notice = $('notice');
    notice.textContent = `${missing.join(', ')} did not load from /console/vendor/ (or failed its self-test), so ${consequence}. ` +
      'Install libjs-marked, node-dompurify and libjs-highlight.js on the server (make run and the Docker image do).';
    notice.hidden = false;
  }

  function renderMarkdown(container, markdown) {
    if (!hasMarkdown) {
      container.className = 'plain';
      container.textContent = markdown;
      return;
    }
    container.innerHTML = window.DOMPurify.sanitize(window.marked.parse(markdown), purifyOptions);
    if (highlight) {
      for (const block of container.querySelectorAll('pre code')) highlight.call(hljs, block);
    }
  }

  // How long one frame's rendering should take, and how much finished text it renders at most to stay near
  // that: a burst (a reconnect's replay, an answer arriving faster than frames) becomes several short frames
  // instead of one long one. The limit adapts to the machine: halved after a slow frame, doubled after a
  // quick one that left text for later.
  const frameBudgetMs = 12;
  let frozenPerFrame = 4096;

  // One message's text. Blocks that can no longer change (everything before a blank line that is followed by
  // an unindented line outside a code fence) are rendered once into their own element; only the rest (the
  // tail) is re-rendered, so a long answer costs the same per frame as a short one.
  class MarkdownView {
    constructor(container) {
      this.container = container;
      this.tail = element('div');
      this.reset();
    }

    reset() {
      this.text = '';
      this.committed = 0; // text before this index is in frozen chunks
      this.boundaries = []; // block boundaries after `committed`: text before each can be frozen
      this.scanned = 0; // complete lines before this index have been scanned for block boundaries
      this.fence = null; // the open code fence ("```", "~~~~"), or null
      this.blankLine = false; // a blank line outside a fence since the last line with content
      this.renderedTail = null;
      this.tail.replaceChildren();
      this.container.replaceChildren(this.tail);
    }

    append(delta) {
      this.text += delta;
    }

    // Renders up to `frozenPerFrame` of finished blocks, then the tail once nothing finished is left.
    // Returns whether there is more to render (in another frame).
    render() {
      this.scan();
      if (this.boundaries.length) {
        const limit = this.committed + frozenPerFrame;
        let count = 1; // at least one block, however long
        while (count < this.boundaries.length && this.boundaries[count] <= limit) count += 1;
        this.commit(this.boundaries[count - 1]);
        this.boundaries.splice(0, count);
        if (this.boundaries.length) return true; // the tail would be all the text not yet frozen
      }
      const tail = this.text.slice(this.committed);
      if (tail !== this.renderedTail) {
        renderMarkdown(this.tail, tail);
        this.renderedTail = tail;
      }
      return false;
    }

    scan() {
      let start = this.scanned;
      for (let end = this.text.indexOf('\n', start); end >= 0; end = this.text.indexOf('\n', start)) {
        this.scanLine(this.text.slice(start, end), start);
        start = end + 1;
      }
      this.scanned = start;
    }

    scanLine(line, start) {
      if (this.fence) {
        const close = /^ {0,3}(`{3,}|~{3,})\s*$/.exec(line);
        if (close && close[1][0] === this.fence[0] && close[1].length >= this.fence.length) this.fence = null;
        return;
      }
      if (line.trim() === '') {
        this.blankLine = true;
        return;
      }
      if (this.blankLine && /^\S/.test(line)) this.boundaries.push(start);
      this.blankLine = false;
      const open = /^ {0,3}(`{3,}|~{3,})/.exec(line);
      if (open && !(open[1][0] === '`' && line.slice(open[0].length).includes('`'))) this.fence = open[1];
    }

    commit(end) {
      const chunk = element('div');
      renderMarkdown(chunk, this.text.slice(this.committed, end));
      this.container.insertBefore(chunk, this.tail);
      this.committed = end;
    }
  }

  // MARK: Server-Sent Events

  // The text/event-stream format (HTML Living Standard §9.2.6), fed decoded text in arbitrary pieces.
  class SSEParser {
    constructor() {
      this.pending = '';
      this.data = [];
      this.type = '';
      this.lastEventID = '';
    }

    feed(chunk) {
      const text = this.pending + chunk;
      const events = [];
      const newline = /\r\n|\r|\n/g;
      let start = 0;
      for (let match = newline.exec(text); match; match = newline.exec(text)) {
        if (match[0] === '\r' && match.index === text.length - 1) break; // perhaps the first half of \r\n
        this.line(text.slice(start, match.index), events);
        start = newline.lastIndex;
      }
      this.pending = text.slice(start);
      return events;
    }

    line(line, events) {
      if (line === '') {
        if (this.data.length) events.push({ type: this.type || 'message', data: this.data.join('\n'), id: this.lastEventID });
        this.data = [];
        this.type = '';
        return;
      }
      if (line.startsWith(':')) return; // a comment: the server's keepalive
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? '' : line.slice(colon + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'data') this.data.push(value);
      else if (field === 'event') this.type = value;
      else if (field === 'id' && !value.includes('\0')) this.lastEventID = value;
    }
  }

  // MARK: Page state

  const tokenKey = 'sluice-console-token';
  const connection = $('connection');
  const transcript = $('transcript');
  let run = null; // the stream being shown

  function setConnection(state, detail) {
    connection.dataset.state = state;
    connection.textContent = detail ? `${state}: ${detail}` : state;
  }

  function setStatus(text, kind) {
    const status = $('status');
    status.textContent = text;
    status.dataset.kind = kind;
  }

  function authorization() {
    const token = $('token').value.trim();
    return token ? { authorization: `Bearer ${token}` } : {};
  }

  // The error message of a failed response: Sluice answers `{"error": {"code", "message"}}`.
  async function failureMessage(response) {
    const text = await response.text().catch(() => '');
    try {
      const error = JSON.parse(text).error;
      if (error?.message) return `${error.code ?? response.status}: ${error.message}`;
    } catch {
      // not JSON: fall through to the raw text
    }
    return `HTTP ${response.status}${text ? `: ${text.trim().slice(0, 300)}` : ''}`;
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  // MARK: Rendering a run

  const clip = (text, limit = 20000) => (text.length > limit ? `${text.slice(0, limit)}… (${text.length - limit} more characters)` : text);

  // A tool's result: short fields on one line (`bytes: 860 · path: "notes.txt"`), long ones (a file's
  // content, a listing) below it as text rather than as an escaped JSON string.
  function showOutput(card, output) {
    const long = [];
    const short = [];
    if (output !== null && typeof output === 'object' && !Array.isArray(output)) {
      for (const [key, value] of Object.entries(output)) {
        const json = JSON.stringify(value);
        if (typeof value === 'string' && (value.length > 80 || value.includes('\n'))) long.push([key, value]);
        else if (json.length > 80) long.push([key, JSON.stringify(value, null, 2)]);
        else short.push(`${key}: ${json}`);
      }
    } else {
      long.push(['', typeof output === 'string' ? output : JSON.stringify(output, null, 2)]);
    }
    card.summary.textContent = short.join(' · ');
    card.result.textContent = clip(long.map(([key, text]) => (long.length > 1 ? `${key}:\n${text}` : text)).join('\n\n'));
    card.result.hidden = long.length === 0;
  }

  class Run {
    constructor() {
      this.streamID = null;
      this.lastSeq = 0;
      this.startedAt = performance.now();
      this.firstTokenAt = null;
      this.endedAt = null;
      this.done = false;
      this.afterRendering = null; // what finish() shows once everything is rendered
      this.messages = new Map(); // message id → MarkdownView
      this.tools = new Map(); // tool id → card elements
      this.extras = new Map(); // message id → its thinking (collapsed) and citation footnotes, under the answer
      this.dirty = new Set();
      this.frame = 0;
      this.reading = new AbortController();
    }

    message(id) {
      let view = this.messages.get(id);
      if (!view) {
        const article = element('article', 'message');
        article.dataset.messageId = id;
        transcript.append(article);
        view = new MarkdownView(article);
        this.messages.set(id, view);
      }
      return view;
    }

    scheduleRender(view) {
      this.dirty.add(view);
      if (!this.frame) this.frame = requestAnimationFrame(() => this.renderNow());
    }

    // One frame's rendering.
    renderNow() {
      this.frame = 0;
      const started = performance.now();
      const root = document.scrollingElement;
      const following = root.scrollTop + root.clientHeight >= root.scrollHeight - 80;
      for (const view of [...this.dirty]) {
        if (!view.render()) this.dirty.delete(view);
      }
      if (following) root.scrollTop = root.scrollHeight;
      // Each frame's rendering work, for the browser's performance tools (and the console's own tests).
      const elapsed = performance.measure('console render', { start: started }).duration;
      if (elapsed > 2 * frameBudgetMs) frozenPerFrame = Math.max(512, frozenPerFrame / 2);
      else if (this.dirty.size && elapsed < frameBudgetMs / 2) frozenPerFrame = Math.min(65536, frozenPerFrame * 2);
      if (this.dirty.size) {
        this.frame = requestAnimationFrame(() => this.renderNow());
      } else if (this.afterRendering) {
        const afterRendering = this.afterRendering;
        this.afterRendering = null;
        afterRendering();
      }
    }

    note(text) {
      transcript.append(element('p', 'note', text));
    }

    // A message's extras sit right after its answer: thinking collapsed ("Thinking", expandable), then footnotes.
    extra(id) {
      let extra = this.extras.get(id);
      if (!extra) {
        const thinking = element('details', 'thinking');
        thinking.append(element('summary', null, 'Thinking'));
        const thinkingText = element('pre', 'thinking-text');
        thinking.append(thinkingText);
        thinking.hidden = true;
        const footnotes = element('ol', 'footnotes');
        footnotes.hidden = true;
        this.message(id).container.after(thinking, footnotes);
        extra = { thinking, thinkingText, footnotes };
        this.extras.set(id, extra);
      }
      return extra;
    }

    resetExtra(id) {
      const extra = this.extras.get(id);
      if (!extra) return;
      extra.thinking.remove();
      extra.footnotes.remove();
      this.extras.delete(id);
    }

    // A client tool call: the caller runs it, so its card shows the input and no progress bar.
    clientToolCard(toolUseID, name) {
      const card = this.toolCard(toolUseID, name);
      if (card.root.dataset.state === 'running') {
        card.root.dataset.state = 'client';
        card.state.textContent = 'for the caller to run';
        card.progress.hidden = true;
      }
      return card;
    }

    toolCard(id, name) {
      let card = this.tools.get(id);
      if (!card) {
        const root = element('article', 'tool-card');
        root.dataset.toolId = id;
        root.dataset.state = 'running';
        const header = element('header');
        const state = element('span', 'tool-state', 'running');
        header.append(element('span', 'tool-name', name ?? 'tool'), state);
        const input = element('pre', 'tool-input');
        const progress = element('progress');
        progress.max = 100;
        const message = element('div', 'tool-progress-message');
        const summary = element('div', 'tool-summary');
        const result = element('pre', 'tool-output');
        result.hidden = true;
        root.append(header, input, progress, message, summary, result);
        transcript.append(root);
        card = { root, state, input, progress, message, summary, result };
        this.tools.set(id, card);
      }
      return card;
    }

    handle(event) {
      switch (event.type) {
        case 'stream_queued':
          setStatus(`queued at position ${event.position}`, 'running');
          break;
        case 'message_start':
          this.message(event.id);
          setStatus('generating…', 'running');
          break;
        case 'message_delta':
          this.firstTokenAt ??= performance.now();
          this.message(event.id).append(event.delta);
          this.scheduleRender(this.message(event.id));
          break;
        case 'thinking_delta': {
          const extra = this.extra(event.id);
          extra.thinking.hidden = false;
          extra.thinkingText.textContent += event.delta;
          break;
        }
        case 'tool_call_delta': {
          const card = this.clientToolCard(event.tool_use_id, event.name);
          card.input.textContent += event.partial_json;
          break;
        }
        case 'tool_call': {
          const card = this.clientToolCard(event.tool_use_id, event.name);
          card.input.textContent = JSON.stringify(event.input, null, 2);
          break;
        }
        case 'citation': {
          const { footnotes } = this.extra(event.id);
          footnotes.hidden = false;
          const citation = event.citation ?? {};
          const source = citation.document_title ?? citation.title ?? citation.url ?? '';
          footnotes.append(element('li', null, `“${citation.cited_text ?? ''}”${source ? ` — ${source}` : ''}`));
          this.message(event.id).append(`[${footnotes.children.length}]`);
          this.scheduleRender(this.message(event.id));
          break;
        }
        case 'content_block': {
          const block = event.block ?? {};
          const card = this.toolCard(`${event.id}/${event.index}`, block.name ?? block.type);
          card.root.dataset.state = 'complete';
          card.state.textContent = block.type;
          card.progress.hidden = true;
          card.input.textContent = JSON.stringify(block.input ?? block.content ?? block, null, 2);
          break;
        }
        case 'message_restart':
          this.resetExtra(event.id);
          this.message(event.id).reset();
          this.note(`The answer restarted (${event.reason}).`);
          break;
        case 'upstream_retry':
          if (event.reason === 'handoff' || event.reason === 'replica_lost') {
            this.note(`Another server continues the answer (${event.reason}, ${event.mode}).`);
          } else {
            this.note(`Upstream attempt ${event.attempt} failed (${event.reason}); retrying in ${event.delay_ms} ms (${event.mode}).`);
          }
          break;
        case 'stream_handoff':
          // The server is shutting down: the stream ends here without a final event, and the reconnect continues it.
          this.note('The server handed the stream off; reconnecting.');
          break;
        case 'tool_start': {
          const card = this.toolCard(event.id, event.name);
          card.input.textContent = JSON.stringify(event.input, null, 2);
          break;
        }
        case 'tool_progress': {
          const card = this.toolCard(event.id);
          if (typeof event.percentage === 'number') card.progress.value = event.percentage;
          card.message.textContent = event.message;
          break;
        }
        case 'tool_complete': {
          const card = this.toolCard(event.id);
          card.root.dataset.state = 'complete';
          card.state.textContent = 'complete';
          // A tool that reports no percentage leaves the bar indeterminate until it is done.
          if (!card.progress.hasAttribute('value')) card.progress.value = 100;
          showOutput(card, event.output);
          break;
        }
        case 'tool_error': {
          const card = this.toolCard(event.id);
          card.root.dataset.state = 'error';
          card.state.textContent = 'error';
          card.result.className = 'tool-output tool-error';
          card.result.textContent = event.error;
          card.result.hidden = false;
          break;
        }
        case 'stream_complete':
          this.finish(() => {
            setStatus('complete', 'done');
            this.showStats(event.usage);
          });
          break;
        case 'stream_error': {
          const code = event.details?.code ?? 'UNKNOWN';
          this.finish(() => {
            setStatus(code === 'CANCELLED' ? `cancelled (${code}): ${event.error}` : `failed (${code}): ${event.error}`, 'error');
            this.showStats();
          });
          break;
        }
        default:
          break; // event types newer than this page
      }
    }

    showStats(usage) {
      const parts = [];
      if (usage) parts.push(`${usage.input_tokens} input + ${usage.output_tokens} output tokens`);
      if (this.firstTokenAt !== null) parts.push(`first token ${Math.round(this.firstTokenAt - this.startedAt)} ms`);
      parts.push(`total ${Math.round(this.endedAt - this.startedAt)} ms`);
      if (this.streamID) parts.push(this.streamID);
      $('stats').textContent = parts.join(' · ');
    }

    // The stream ended (or failed for good): stop reading, and once what is left is rendered (frame by
    // frame, like the rest), show the outcome and reset the controls.
    finish(showOutcome) {
      this.done = true;
      this.endedAt = performance.now();
      this.reading.abort();
      setConnection('closed');
      this.afterRendering = () => {
        showOutcome();
        $('send').disabled = false;
        $('cancel').disabled = true;
      };
      if (!this.frame) this.renderNow();
    }

    fail(message) {
      this.finish(() => {
        setConnection('error');
        setStatus(message, 'error');
        this.showStats();
      });
    }

    // MARK: Connection

    // Reads the event stream until a final event, reconnecting with Last-Event-ID after each drop.
    async follow() {
      let delay = 250;
      let attempt = 0;
      while (!this.done) {
        if (attempt > 0) setConnection('reconnecting', `attempt ${attempt}, after event ${this.lastSeq}`);
        else setConnection('connecting');
        try {
          const headers = { accept: 'text/event-stream', ...authorization() };
          if (this.lastSeq > 0) headers['last-event-id'] = String(this.lastSeq);
          const response = await fetch(`/v1/streams/${encodeURIComponent(this.streamID)}/events`, {
            headers, cache: 'no-store', signal: this.reading.signal,
          });
          if (response.status === 204) {
            // Nothing after our last event: the stream ended while we were away.
            this.fail(`the stream ended without a final event after event ${this.lastSeq}`);
            return;
          }
          if (!response.ok) {
            const message = await failureMessage(response);
            // 5xx (a proxy or a restarting server) is worth retrying; 4xx (unknown stream, token, replay lost) is not.
            if (response.status < 500) {
              this.fail(message);
              return;
            }
            throw new Error(message);
          }
          setConnection('live');
          const seqBefore = this.lastSeq;
          await this.read(response.body);
          if (this.lastSeq > seqBefore) {
            delay = 250;
            attempt = 0;
          }
        } catch (error) {
          if (this.done) return;
          console.warn('event stream interrupted:', error);
        }
        if (this.done) return;
        attempt += 1;
        setConnection('reconnecting', `attempt ${attempt} in ${delay} ms, after event ${this.lastSeq}`);
        await sleep(delay);
        delay = Math.min(delay * 2, 4000);
      }
    }

    async read(body) {
      const reader = body.pipeThrough(new TextDecoderStream()).getReader();
      const parser = new SSEParser();
      let since = performance.now();
      for (;;) {
        // Buffered data resolves reads at once, without ever leaving this task: give frames a turn (not in a
        // hidden tab, which renders no frames and throttles timers to one a second or less).
        if (!document.hidden && performance.now() - since > 8) {
          await sleep(0);
          since = performance.now();
        }
        const { value, done } = await reader.read();
        if (done) return;
        for (const sse of parser.feed(value)) {
          let event;
          try {
            event = JSON.parse(sse.data);
          } catch {
            continue; // not one of Sluice's events
          }
          const seq = typeof event.seq === 'number' ? event.seq : Number(sse.id);
          if (seq <= this.lastSeq) continue; // replayed after a reconnect: already shown
          this.lastSeq = seq;
          try {
            this.handle(event);
          } catch (error) {
            // A bug here must show, not pass for a dropped connection.
            this.fail(`The console could not show event ${seq} (${event.type}): ${error}`);
          }
          if (this.done) return;
        }
      }
    }
  }

  // MARK: Controls

  function request() {
    const tools = [...document.querySelectorAll('input.tool:checked')].map((box) => box.value);
    const body = {
      model: $('model').value.trim(),
      max_tokens: Number.parseInt($('max-tokens').value, 10),
      messages: [{ role: 'user', content: $('prompt').value }],
    };
    const definitions = $('tool-defs').value.trim();
    if (definitions) {
      try {
        const parsed = JSON.parse(definitions);
        tools.push(...(Array.isArray(parsed) ? parsed : [parsed]));
      } catch (error) {
        throw new Error(`The client tools are not valid JSON: ${error.message}`);
      }
    }
    if (tools.length) body.tools = tools;
    const budget = $('thinking-budget').value.trim();
    if (budget) body.thinking = { type: 'enabled', budget_tokens: Number.parseInt(budget, 10) };
    const simulation = $('simulation').value.trim();
    if (simulation) {
      try {
        body.simulation = JSON.parse(simulation);
      } catch (error) {
        throw new Error(`The simulation is not valid JSON: ${error.message}`);
      }
    }
    return body;
  }

  async function send(event) {
    event.preventDefault();
    if ($('send').disabled) return; // a stream is running, or its last text is still being rendered
    let body;
    try {
      body = request();
    } catch (error) {
      setStatus(error.message, 'error');
      return;
    }
    transcript.replaceChildren();
    performance.clearMeasures('console render');
    $('stats').textContent = '';
    $('send').disabled = true;
    run = new Run();
    const current = run;
    setConnection('connecting');
    setStatus('starting…', 'running');
    try {
      const response = await fetch('/v1/streams', {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...authorization() },
        body: JSON.stringify(body),
        cache: 'no-store',
      });
      if (!response.ok) {
        current.fail(await failureMessage(response));
        return;
      }
      current.streamID = (await response.json()).stream_id;
    } catch (error) {
      current.fail(`Could not start the stream: ${error.message}`);
      return;
    }
    $('cancel').disabled = false;
    await current.follow();
  }

  async function cancel() {
    if (!run || run.done || !run.streamID) return;
    $('cancel').disabled = true;
    setStatus('cancelling…', 'running');
    try {
      const response = await fetch(`/v1/streams/${encodeURIComponent(run.streamID)}`, {
        method: 'DELETE', headers: authorization(), cache: 'no-store',
      });
      // On success the stream itself ends with stream_error CANCELLED.
      if (!response.ok) setStatus(`Cancel failed: ${await failureMessage(response)}`, 'error');
    } catch (error) {
      setStatus(`Cancel failed: ${error.message}`, 'error');
    }
    if (run && !run.done) $('cancel').disabled = false;
  }

  const token = $('token');
  token.value = sessionStorage.getItem(tokenKey) ?? '';
  token.addEventListener('change', () => {
    if (token.value) sessionStorage.setItem(tokenKey, token.value);
    else sessionStorage.removeItem(tokenKey);
  });
  $('prompt-form').addEventListener('submit', send);
  $('cancel').addEventListener('click', cancel);
  showNotice();
  setConnection('idle');
})();

// Live run page: state changes and the log tail over a WebSocket (no inline scripts: CSP).
// The page works without it; a reload shows the same information.
(() => {
  const log = document.getElementById("run-log");
  if (log) log.scrollTop = log.scrollHeight; // open at the newest line
  const root = document.querySelector("[data-run-ws]");
  if (!root || !("WebSocket" in window)) return;
  const status = document.querySelector("[data-ws-status]");
  const stateEl = root.querySelector("[data-run-state]");
  const scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
  let delay = 1000;
  const connect = () => {
    const socket = new WebSocket(scheme + window.location.host + root.dataset.runWs);
    let pinger = null;
    socket.addEventListener("open", () => {
      delay = 1000;
      // Tells the server someone watches, so the reconciler keeps pushing the log tail.
      pinger = setInterval(() => socket.send(JSON.stringify({ type: "ping" })), 30000);
      if (status) status.textContent = status.dataset.live || "live";
    });
    socket.addEventListener("message", (event) => {
      const msg = JSON.parse(event.data);
      if (msg.type === "log.tail" && log) {
        const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
        log.textContent = msg.text;
        if (atBottom) log.scrollTop = log.scrollHeight;
      } else if (msg.type === "run.state" && stateEl && stateEl.dataset.current !== msg.state) {
        // A new state may bring new buttons and attempts: reload the page once.
        if (stateEl.dataset.current) window.location.reload();
        stateEl.dataset.current = msg.state;
      }
    });
    socket.addEventListener("close", (event) => {
      if (pinger) clearInterval(pinger);
      if (event.code === 4403 || event.code === 4404) return;
      setTimeout(connect, delay);
      delay = Math.min(delay * 2, 30000);
    });
  };
  connect();
})();

// hamdam's page: talks to /ws/chat, shows the reply as it is written, keeps the session across
// reloads (its turns are read back from the server), and shows crisis resources prominently.
// No libraries and nothing fetched from elsewhere.
"use strict";

const TEXT = {
  fa: {
    dir: "rtl", title: "همدم", other: "中文", otherHref: "?lang=zh", send: "بفرست", placeholder: "بنویس…",
    forget: "این گفت‌وگو یاد گرفته نشه", newSession: "گفت‌وگوی تازه", good: "خوب بود", bad: "خوب نبود",
    fix: "اصلاح", fixPrompt: "جواب بهتر را بنویس:", crisis: "لطفاً همین حالا با یک آدم واقعی حرف بزن:",
    keyLabel: "کلید دسترسی این سرور:", keySave: "ذخیره", busy: "سرور الان شلوغه؛ چند لحظه دیگه دوباره می‌فرستم…",
    loading: "مدل در حال آماده شدنه…", lost: "ارتباط قطع شد؛ دوباره وصل می‌شم…", error: "خطا: ",
    ageQuestion: (n) => `این گفت‌وگو برای کسانی است که ${n} سال یا بیشتر دارند. ${n} سال یا بیشتر داری؟`,
    ageYes: "بله", ageNo: "نه",
    ageRefused: "این گفت‌وگو برای تو نیست. اگر دلت گرفته، با یک بزرگ‌تر که به او اعتماد داری حرف بزن، یا با این‌ها:",
  },
  zh: {
    dir: "ltr", title: "伴侣", other: "فارسی", otherHref: "?lang=fa", send: "发送", placeholder: "写点什么…",
    forget: "不要学习这段对话", newSession: "新对话", good: "好", bad: "不好", fix: "修改",
    fixPrompt: "写下更好的回答：", crisis: "请现在就联系一个真实的人：", keyLabel: "此服务器的访问密钥：",
    keySave: "保存", busy: "服务器正忙，稍后自动重发…", loading: "模型正在加载…", lost: "连接已断开，正在重连…",
    error: "错误：",
    ageQuestion: (n) => `此对话仅面向${n}岁及以上的人。你是否已满${n}岁？`, ageYes: "是", ageNo: "否",
    ageRefused: "这个对话不适合你。如果你心里难过，请和你信任的大人谈谈，或联系：",
  },
};

const params = new URLSearchParams(location.search);
const lang = params.get("lang") === "zh" ? "zh" : "fa";
const t = TEXT[lang];
const $ = (id) => document.getElementById(id);
const store = { session: `hamdam.session.${lang}`, key: "hamdam.key", age: "hamdam.age" };

let socket = null;
let sessionId = localStorage.getItem(store.session);
let writing = null;   // the bubble being written
let pending = null;   // a message waiting for the server (resent after a 429)
let authRequired = false;
let ageGate = null;  // serve.age_gate: the age a user confirms before the chat opens

function applyLanguage() {
  document.documentElement.lang = lang;
  document.documentElement.dir = t.dir;
  document.title = t.title;
  $("title").textContent = t.title;
  $("lang-switch").textContent = t.other;
  $("lang-switch").href = t.otherHref;
  $("send").textContent = t.send;
  $("message").placeholder = t.placeholder;
  $("forget").textContent = t.forget;
  $("new-session").textContent = t.newSession;
  $("crisis-title").textContent = t.crisis;
  $("key-label").textContent = t.keyLabel;
  $("key-save").textContent = t.keySave;
}

function status(text) { $("status").textContent = text || ""; }

function authHeaders() {
  const key = sessionStorage.getItem(store.key);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function bubble(role, text, kind) {
  const div = document.createElement("div");
  div.className = `turn ${role}` + (kind ? ` ${kind}` : "");
  div.textContent = text;
  $("messages").appendChild(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

function showCrisis(resources) {
  const list = $("crisis-resources");
  list.replaceChildren(...resources.map((r) => { const li = document.createElement("li"); li.textContent = r; return li; }));
  $("crisis").hidden = false;
  $("crisis").scrollIntoView({ block: "start" });
}

function feedbackButtons(div) {
  const row = document.createElement("div");
  row.className = "feedback";
  for (const [command, label] of [["good", t.good], ["bad", t.bad], ["fix", t.fix]]) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = label;
    button.dataset.command = command;
    button.addEventListener("click", () => {
      let text = "";
      if (command === "fix") {
        text = prompt(t.fixPrompt, "") || "";
        if (!text.trim()) return;
      }
      send({ command, text, session_id: sessionId, turn_id: Number(div.dataset.turn) });
      row.querySelectorAll("button").forEach((b) => b.classList.remove("chosen"));
      button.classList.add("chosen");
    });
    row.appendChild(button);
  }
  div.appendChild(row);
}

function send(payload) {
  if (socket && socket.readyState === WebSocket.OPEN) { socket.send(JSON.stringify(payload)); return true; }
  status(t.lost);
  return false;
}

function reset() {
  if (writing) { writing.classList.remove("writing"); writing = null; }
  pending = null;
  $("send").disabled = false;
}

function onEvent(event) {
  const data = JSON.parse(event.data);
  if (data.type === "session") {
    sessionId = data.session_id;
    localStorage.setItem(store.session, sessionId);
  } else if (data.type === "token") {
    if (!writing) writing = bubble("assistant", "", "writing");
    writing.textContent += data.text;
    writing.scrollIntoView({ block: "end" });
  } else if (data.type === "replace") {
    if (!writing) writing = bubble("assistant", "", "writing");
    writing.textContent = data.text;
  } else if (data.type === "done") {
    if (!writing) writing = bubble("assistant", "", "writing");
    writing.textContent = data.reply;
    writing.classList.remove("writing");
    if (data.kind) writing.classList.add(data.kind);
    if (data.kind === "crisis" && data.resources) showCrisis(data.resources);
    writing.dataset.kind = data.kind;
    writing.dataset.turn = data.turn_id;
    if (data.kind === "model") feedbackButtons(writing);
    writing = null;
    pending = null;
    status("");
    $("send").disabled = false;
  } else if (data.type === "ack") {
    status(data.message);
  } else if (data.type === "error") {
    if (data.status === 429 || data.status === 503) {
      status(data.status === 429 ? t.busy : t.loading);
      const retry = pending;
      setTimeout(() => { if (retry && pending === retry) send(retry); }, 1000 * Math.max(1, data.retry_after || 1));
      return;
    }
    if (data.status === 401) { authRequired = true; $("key-form").hidden = false; }
    status(t.error + data.message);
    reset();
  }
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  socket = new WebSocket(`${scheme}://${location.host}/ws/chat`);
  socket.addEventListener("open", () => {
    const key = sessionStorage.getItem(store.key);
    if (key) socket.send(JSON.stringify({ type: "auth", key }));
    if (ageGate) socket.send(JSON.stringify({ type: "age", confirmed: true }));
    status("");
  });
  socket.addEventListener("message", onEvent);
  // A reply cut off by a lost connection is not sent again (it may be stored): the user may resend it.
  socket.addEventListener("close", () => { reset(); status(t.lost); setTimeout(connect, 2000); });
}

async function restore() {
  if (!sessionId) return;
  const response = await fetch(`/v1/sessions/${encodeURIComponent(sessionId)}`, { headers: authHeaders() });
  if (response.status === 403) return;
  if (response.status === 404) { localStorage.removeItem(store.session); sessionId = null; return; }
  if (!response.ok) return;
  const { turns } = await response.json();
  for (const turn of turns) {
    bubble("user", turn.message);
    const div = bubble("assistant", turn.reply, turn.kind);
    div.dataset.turn = turn.turn_id;
    if (turn.kind === "model") feedbackButtons(div);
  }
  return turns;
}

async function start() {
  applyLanguage();
  const info = await (await fetch(`/info?lang=${lang}`)).json();
  $("disclosure").textContent = info.disclosure || "";
  authRequired = info.auth_required;
  if (authRequired && !sessionStorage.getItem(store.key)) $("key-form").hidden = false;
  if (!info.ready) status(t.loading);
  ageGate = info.age_gate;
  if (ageGate && localStorage.getItem(store.age) !== String(ageGate)) {
    askAge(info);  // nothing opens (no history, no socket) until the user answers
    return;
  }
  await open(info);
}

async function open(info) {
  const turns = (await restore()) || [];
  if (turns.some((turn) => turn.kind === "crisis")) showCrisis(info.resources);
  connect();
}

function askAge(info) {
  $("age-question").textContent = t.ageQuestion(info.age_gate);
  $("age-yes").textContent = t.ageYes;
  $("age-no").textContent = t.ageNo;
  $("age-gate").hidden = false;
  $("composer").hidden = true;
  $("age-yes").addEventListener("click", () => {
    localStorage.setItem(store.age, String(info.age_gate));
    $("age-gate").hidden = true;
    $("composer").hidden = false;
    open(info);
  });
  $("age-no").addEventListener("click", () => {
    $("age-refused").textContent = t.ageRefused;
    const list = $("age-resources");
    list.replaceChildren(...info.resources.map((r) => { const li = document.createElement("li"); li.textContent = r; return li; }));
    $("age-refused").hidden = false;
    list.hidden = false;
    $("age-yes").hidden = true;
    $("age-no").hidden = true;
  });
}

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("message").value.trim();
  if (!text || writing || pending) return;
  const payload = { message: text, session_id: sessionId };
  if (!send(payload)) return;
  bubble("user", text);
  pending = payload;
  $("message").value = "";
  $("send").disabled = true;
});

$("message").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); $("composer").requestSubmit(); }
});

$("forget").addEventListener("click", () => { if (sessionId) send({ command: "forget", session_id: sessionId }); });

$("new-session").addEventListener("click", () => {
  localStorage.removeItem(store.session);
  sessionId = null;
  $("messages").replaceChildren();
  $("crisis").hidden = true;
});

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(store.key, $("key").value);
  $("key-form").hidden = true;
  if (socket) socket.close();
});

start();

// A small client of this signaling service: create or join a room by link, see
// who is there with their mute state, and talk. P2P (offer/answer/ice-candidate
// relayed with `to`) by default; through the Cloudflare Calls SFU, via the
// edge's proxy, when the service has Calls configured. No build step.
//
// Links: an open room is `/?room=<id>`. A private (`secret`) room is
// `/#room=<id>&secret=<secret>`, and a token minted by the app's backend opens
// as `/#room=<id>&token=<jwt>`: secrets and tokens ride in the fragment, which
// the browser never sends, so they reach no server's access log.

const $ = (selector) => document.querySelector(selector);

// Close codes after which reconnecting would not help (docs/protocol.md).
const FINAL_CLOSE = {
  1008: "The connection was closed because this client kept sending invalid messages.",
  1009: "The connection was closed because a message was too large.",
  4000: "This call was opened again somewhere else (another tab or device).",
  4003: "You are no longer in this room. Join again to come back.",
  4004: "This room no longer exists.",
  4009: "This room is full.",
};
const ERROR_WORDS = {
  room_full: "This room is full.",
  room_not_found: "This room does not exist or has expired. Check the link or create a new room.",
  unavailable: "The service is busy right now; trying again.",
  rate_limited: "Slow down: too many messages.",
  join_secret_required:
    "This room is private. The link you opened is missing its secret or the secret is no " +
    "longer valid; ask for a new link.",
  invite_only:
    "This room is invite-only: you need a personal invitation link from the app that runs it.",
  grant_denied: "Your invitation does not allow that.",
  unknown_participant: "That participant is no longer in the room.",
};
// Error frames that come just before the service closes the socket (4003):
// what to tell the person, instead of the generic words of the close code.
const REFUSED_WORDS = {
  kicked: "You were removed from the room.",
  banned: "You may not join this room any more.",
  token_revoked: "Your invitation to this room was withdrawn; ask for a new link.",
};
/** The words for a code the service sent, if we have some (own keys only). */
const wordsFor = (table, code) => (Object.hasOwn(table, code) ? table[code] : undefined);
const INVALID_LINK = "This link is invalid or the room has expired. Create a new room.";
const BAD_INVITATION = "This invitation link is damaged or has expired; ask for a new one.";
const RECONNECT_DELAYS_MS = [250, 500, 1000, 2000, 3000];
const GIVE_UP_AFTER_MS = 30000;

// What tests (and curious people) can look at from the console.
const debug = { events: [], call: null, mode: null, iceRenewals: 0 };
window.signaling = debug;

// --- HTTP ------------------------------------------------------------------------

class HttpError extends Error {
  constructor(status, body) {
    super(body && body.error ? body.error : `HTTP ${status}`);
    this.status = status;
    this.code = body && body.code;
  }
}

async function http(method, path, body, token) {
  const headers = {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) throw new HttpError(response.status, data);
  return data;
}

// --- UI helpers --------------------------------------------------------------------

function show(view) {
  for (const id of ["create-view", "join-view", "call-view"]) $(`#${id}`).hidden = id !== view;
}

function showError(text) {
  const box = $("#error");
  box.textContent = text;
  box.hidden = !text;
}

/** Something that happened to us (not an error): a moderator muted us. */
function showNotice(text) {
  const box = $("#notice");
  box.textContent = text;
  box.hidden = !text;
}

function setStatus(state, text) {
  const status = $("#status");
  status.dataset.state = state;
  status.textContent = text || state;
}

// --- links ---------------------------------------------------------------------------

/** What the address says: the room, and a join secret or a token when the
 * fragment carries one. */
function readLink() {
  const query = new URLSearchParams(location.search);
  const fragment = new URLSearchParams(location.hash.slice(1));
  return {
    roomId: fragment.get("room") || query.get("room"),
    secret: fragment.get("secret"),
    token: fragment.get("token"),
    name: fragment.get("name"),
  };
}

/** The link to share: the old form for open rooms; for a private room the
 * room, its secret (and its name, for the title) in the fragment only. */
function roomLink(roomId, secret, name) {
  if (!secret) return `${location.origin}/?room=${encodeURIComponent(roomId)}`;
  const fragment = new URLSearchParams({ room: roomId, secret });
  if (name) fragment.set("name", name);
  return `${location.origin}/#${fragment}`;
}

/** A token's claims, read only to decide what to show (the server checks the
 * signature and enforces the grants). `null` when it is not a readable JWT. */
function tokenClaims(token) {
  try {
    const payload = token.split(".")[1];
    const base64 = payload.replace(/-/g, "+").replace(/_/g, "/");
    const padded = base64.padEnd(Math.ceil(base64.length / 4) * 4, "=");
    const bytes = Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return claims && typeof claims === "object" ? claims : null;
  } catch {
    return null;
  }
}

function plainWords(error) {
  if (error instanceof HttpError) {
    if (error.status === 404) return ERROR_WORDS.room_not_found;
    if (error.status === 409) return ERROR_WORDS.room_full;
    if (error.status === 429) return "Too many attempts; wait a moment and try again.";
    if (error.status === 401) return BAD_INVITATION;
    if (error.status === 403 && wordsFor(ERROR_WORDS, error.code)) return ERROR_WORDS[error.code];
    return error.message;
  }
  if (error && error.name === "NotAllowedError") {
    return "Camera and microphone access was refused. Allow it in the browser and join again.";
  }
  if (error && error.name === "NotFoundError") return "No camera or microphone was found.";
  return String(error && error.message ? error.message : error);
}

// --- the call ------------------------------------------------------------------------

class Call {
  constructor({ roomId, token, me, name, grants, iceServers, iceTtl, stream }) {
    Object.assign(this, { roomId, token, me, name, grants, iceServers, stream });
    this.iceTimer = null;
    this.renewIceServers(iceTtl);
    this.participants = new Map(); // id -> {name, audio, video, session, tracks}
    this.peers = new Map(); // id -> PeerLink (P2P mode)
    this.sfu = null; // SfuLink (Calls mode)
    this.ws = null;
    this.closing = false;
    this.attempt = 0;
    this.lostSince = null;
    this.connectedOnce = false;
  }

  // -- WebSocket ----------------------------------------------------------------------

  connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    // The token travels as the subprotocol: it stays out of URLs and access logs.
    const ws = new WebSocket(`${scheme}://${location.host}/ws`, [this.token]);
    this.ws = ws;
    setStatus(this.connectedOnce ? "reconnecting" : "connecting");
    ws.onmessage = (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      debug.events.push({ type: message.type, from: message.from || message.participantId });
      this.onMessage(message).catch((error) => console.error("handling", message.type, error));
    };
    ws.onclose = (event) => this.onClose(event);
    this.notice = null;
  }

  send(message) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(message));
  }

  // -- TURN credentials are short-lived: renewed at half their life while in the room --

  renewIceServers(ttl) {
    clearTimeout(this.iceTimer);
    if (!ttl || this.closing) return;
    this.iceTimer = setTimeout(async () => {
      try {
        const fresh = await http("GET", "/cloudflare/ice-servers", undefined, this.token);
        this.iceServers = fresh.iceServers;
        const links = [...this.peers.values(), ...(this.sfu ? [this.sfu] : [])];
        for (const { pc } of links) {
          pc.setConfiguration({ ...pc.getConfiguration(), iceServers: fresh.iceServers });
        }
        debug.iceRenewals += 1;
        this.renewIceServers(fresh.ttl);
      } catch (error) {
        // Not in the room any more (4xx): nothing to renew. Otherwise try again soon.
        if (!(error instanceof HttpError && error.status < 500)) this.renewIceServers(20);
      }
    }, Math.max(1, ttl / 2) * 1000);
  }

  onClose(event) {
    if (this.closing) return;
    const final = this.notice || FINAL_CLOSE[event.code];
    if (final) {
      this.end(final);
      return;
    }
    this.lostSince = this.lostSince || Date.now();
    if (Date.now() - this.lostSince > GIVE_UP_AFTER_MS) {
      this.end("The connection to the service was lost. Join again to come back.");
      return;
    }
    const delay = RECONNECT_DELAYS_MS[Math.min(this.attempt, RECONNECT_DELAYS_MS.length - 1)];
    this.attempt += 1;
    setStatus("reconnecting", `reconnecting (attempt ${this.attempt})`);
    setTimeout(() => this.connect(), delay);
  }

  leave() {
    this.closing = true;
    // A Close frame: the others see `leave` at once.
    if (this.ws) this.ws.close(1000, "left");
    this.teardown();
    setStatus("closed", "left the call");
  }

  end(text) {
    this.closing = true;
    this.teardown();
    setStatus("closed", "disconnected");
    showError(text);
  }

  teardown() {
    clearTimeout(this.iceTimer);
    for (const peer of this.peers.values()) peer.close();
    this.peers.clear();
    if (this.sfu) this.sfu.close();
    for (const track of this.stream.getTracks()) track.stop();
  }

  // -- messages -------------------------------------------------------------------------

  async onMessage(message) {
    switch (message.type) {
      case "welcome":
        return this.onWelcome(message);
      case "join": {
        const data = message.data || {};
        if (data.participant_id === this.me) return;
        this.upsert(data.participant_id, { name: data.participant_name || "Guest" });
        return;
      }
      case "leave": {
        const id = (message.data || {}).participant_id || message.from;
        this.remove(id);
        return;
      }
      case "track-state": {
        if (message.from === this.me) {
          // An operator or a room admin muted (or unmuted) us: do it, and show it.
          applyLocal(this, message.kind, message.enabled);
          if (message.by) {
            const what = message.kind === "audio" ? "microphone" : "camera";
            const did = message.enabled ? "turned on" : "turned off";
            showNotice(`${this.moderator(message.by)} ${did} your ${what}.`);
          }
          return;
        }
        if (!this.participants.has(message.from)) return;
        this.upsert(message.from, { [message.kind]: message.enabled });
        return;
      }
      case "cloudflare-session": {
        const id = message.participantId || message.from;
        if (id === this.me) return;
        this.upsert(id, {
          name: message.participantName,
          session: message.sessionId,
          tracks: message.tracks || [],
        });
        if (this.sfu) this.sfu.pull(id);
        return;
      }
      case "offer":
      case "answer":
        return this.peer(message.from).onDescription(message.description);
      case "ice-candidate":
        return this.peer(message.from).onCandidate(message.candidate);
      case "room-closed":
        this.notice = "The room was closed.";
        return;
      case "kicked":
        this.notice = message.by
          ? `${this.moderator(message.by)} removed you from the room.`
          : "You were removed from the room.";
        return;
      case "error":
        // Refused for good (the close that follows says no more than 4003).
        if (wordsFor(REFUSED_WORDS, message.code)) this.notice = REFUSED_WORDS[message.code];
        else showError(wordsFor(ERROR_WORDS, message.code) || message.message);
        return;
      default:
        return;
    }
  }

  async onWelcome(message) {
    // A first welcome, or a fresh one after a reconnect or a resync: the whole room.
    this.attempt = 0;
    this.lostSince = null;
    this.connectedOnce = true;
    showError("");
    setStatus("connected", "connected");
    const present = new Set();
    for (const p of message.participants) {
      present.add(p.id);
      if (p.id === this.me) continue;
      this.upsert(p.id, {
        name: p.name,
        audio: p.audio,
        video: p.video,
        session: p.session,
        tracks: p.tracks,
      });
    }
    for (const id of [...this.participants.keys()]) {
      if (!present.has(id)) this.remove(id);
    }
    // Tell the others our current mute state (it may have changed while away).
    for (const track of this.stream.getTracks()) {
      if (!track.enabled) this.send({ type: "track-state", kind: track.kind, enabled: false });
    }
    if (this.sfu) {
      await this.sfu.publish();
      for (const id of this.participants.keys()) this.sfu.pull(id);
    } else {
      // P2P: whoever arrives calls everyone already there (the others wait for
      // the offer); links that survived a reconnect are kept as they are.
      for (const id of this.participants.keys()) this.peer(id);
    }
  }

  /** Who did something to us: `by` is "admin" for the room service API, or a
   * room admin's participant id (whose name we know unless it is hidden). */
  moderator(by) {
    if (by === "admin") return "The room's operator";
    const known = this.participants.get(by);
    return known ? `${known.name} (moderator)` : "A moderator";
  }

  /** A room admin's `mute` or `remove` of someone else. The service checks the
   * grant; the page only shows the buttons to a token that claims it. */
  moderate(message) {
    this.send(message);
  }

  upsert(id, fields) {
    const known = this.participants.get(id) || { name: "Guest", audio: true, video: true };
    for (const [key, value] of Object.entries(fields)) {
      if (value !== undefined && value !== null) known[key] = value;
    }
    this.participants.set(id, known);
    renderParticipants(this);
    renderTile(id, known);
  }

  remove(id) {
    if (!this.participants.delete(id)) return;
    const peer = this.peers.get(id);
    if (peer) peer.close();
    this.peers.delete(id);
    if (this.sfu) this.sfu.drop(id);
    removeTile(id);
    renderParticipants(this);
  }

  peer(id) {
    let peer = this.peers.get(id);
    if (!peer) {
      peer = new PeerLink(this, id);
      this.peers.set(id, peer);
    }
    return peer;
  }

  setLocal(kind, enabled) {
    for (const track of this.stream.getTracks()) {
      if (track.kind === kind) track.enabled = enabled;
    }
    this.send({ type: "track-state", kind, enabled });
    renderTile(this.me, { name: `${this.name} (you)`, [kind]: enabled, ...localState(this) });
    renderParticipants(this);
  }
}

function applyLocal(call, kind, enabled) {
  for (const track of call.stream.getTracks()) {
    if (track.kind === kind) track.enabled = enabled;
  }
  const button = $(kind === "audio" ? "#toggle-audio" : "#toggle-video");
  button.setAttribute("aria-pressed", String(enabled));
  button.textContent =
    kind === "audio" ? (enabled ? "Mute mic" : "Unmute mic") : enabled ? "Stop camera" : "Start camera";
  renderTile(call.me, { name: `${call.name} (you)`, ...localState(call) });
  renderParticipants(call);
}

function localState(call) {
  const state = { audio: true, video: true };
  for (const track of call.stream.getTracks()) state[track.kind] = track.enabled;
  return state;
}

// --- P2P: one RTCPeerConnection per other participant ("perfect negotiation") --------

class PeerLink {
  constructor(call, peerId) {
    this.call = call;
    this.peerId = peerId;
    this.polite = call.me > peerId;
    this.makingOffer = false;
    this.ignoreOffer = false;
    this.pending = [];
    this.pc = new RTCPeerConnection({ iceServers: call.iceServers });
    for (const track of call.stream.getTracks()) this.pc.addTrack(track, call.stream);
    this.pc.onnegotiationneeded = () => this.offer();
    this.pc.onicecandidate = ({ candidate }) => {
      if (candidate) call.send({ type: "ice-candidate", to: peerId, candidate: candidate.toJSON() });
    };
    this.pc.ontrack = ({ track, streams }) => {
      const stream = streams[0] || new MediaStream([track]);
      attachStream(peerId, stream);
    };
    this.pc.onconnectionstatechange = () => {
      const state = this.pc.connectionState;
      setTileState(peerId, state);
      if (state === "failed") this.pc.restartIce();
    };
  }

  async offer() {
    try {
      this.makingOffer = true;
      await this.pc.setLocalDescription();
      this.call.send({ type: "offer", to: this.peerId, description: this.pc.localDescription });
    } catch (error) {
      console.error("offer", error);
    } finally {
      this.makingOffer = false;
    }
  }

  async onDescription(description) {
    if (!description || !description.type) return;
    const collision =
      description.type === "offer" && (this.makingOffer || this.pc.signalingState !== "stable");
    this.ignoreOffer = !this.polite && collision;
    if (this.ignoreOffer) return;
    await this.pc.setRemoteDescription(description);
    for (const candidate of this.pending.splice(0)) await this.addCandidate(candidate);
    if (description.type === "offer") {
      await this.pc.setLocalDescription();
      this.call.send({ type: "answer", to: this.peerId, description: this.pc.localDescription });
    }
  }

  async onCandidate(candidate) {
    if (!candidate) return;
    if (!this.pc.remoteDescription) this.pending.push(candidate);
    else await this.addCandidate(candidate);
  }

  async addCandidate(candidate) {
    try {
      await this.pc.addIceCandidate(candidate);
    } catch (error) {
      if (!this.ignoreOffer) console.warn("ice candidate", error);
    }
  }

  close() {
    this.pc.close();
  }
}

// --- SFU: one RTCPeerConnection to Cloudflare Calls, through the edge's proxy --------

class SfuLink {
  constructor(call, sessionId) {
    this.call = call;
    this.sessionId = sessionId;
    this.pc = new RTCPeerConnection({ iceServers: call.iceServers, bundlePolicy: "max-bundle" });
    this.published = null; // [{trackName, kind}]
    this.pulled = new Map(); // participant id -> {key, mids}
    this.owners = new Map(); // mid -> participant id
    this.queue = Promise.resolve();
    this.pc.ontrack = ({ track, transceiver }) => {
      const owner = this.owners.get(transceiver.mid);
      if (!owner) return;
      const tile = ensureTile(owner);
      const video = tile.querySelector("video");
      const stream = video.srcObject || new MediaStream();
      stream.addTrack(track);
      video.srcObject = stream;
    };
    this.pc.onconnectionstatechange = () => {
      for (const id of this.pulled.keys()) setTileState(id, this.pc.connectionState);
    };
  }

  // Calls wants one change at a time per session: every operation is queued.
  run(step) {
    this.queue = this.queue.then(step).catch((error) => {
      console.error("calls", error);
      showError(`Calls: ${plainWords(error)}`);
    });
    return this.queue;
  }

  api(method, path, body) {
    return http(method, `/cloudflare/session/${this.sessionId}${path}`, body, this.call.token);
  }

  publish() {
    return this.run(async () => {
      if (!this.published) {
        const transceivers = this.call.stream
          .getTracks()
          .map((track) => this.pc.addTransceiver(track, { direction: "sendonly" }));
        await this.pc.setLocalDescription(await this.pc.createOffer());
        const tracks = transceivers.map((t) => ({
          location: "local",
          mid: t.mid,
          trackName: `${this.call.me}-${t.sender.track.kind}`,
        }));
        const answer = await this.api("POST", "/tracks/new", {
          sessionDescription: { type: "offer", sdp: this.pc.localDescription.sdp },
          tracks,
        });
        await this.pc.setRemoteDescription(answer.sessionDescription);
        this.published = transceivers.map((t) => ({
          trackName: `${this.call.me}-${t.sender.track.kind}`,
          kind: t.sender.track.kind,
        }));
      }
      // (Again after a reconnect: the room keeps it, but it costs nothing.)
      this.call.send({
        type: "cloudflare-session",
        sessionId: this.sessionId,
        tracks: this.published,
      });
    });
  }

  pull(participantId) {
    return this.run(async () => {
      const p = this.call.participants.get(participantId);
      if (!p || !p.session || !p.tracks || p.tracks.length === 0) return;
      const key = `${p.session}/${p.tracks.map((t) => t.trackName).join(",")}`;
      if (this.pulled.get(participantId)?.key === key) return;
      const result = await this.api("POST", "/tracks/new", {
        tracks: p.tracks.map((t) => ({
          location: "remote",
          sessionId: p.session,
          trackName: t.trackName,
        })),
      });
      const mids = (result.tracks || []).filter((t) => !t.errorCode).map((t) => t.mid);
      for (const mid of mids) this.owners.set(mid, participantId);
      this.pulled.set(participantId, { key, mids });
      if (result.requiresImmediateRenegotiation) {
        await this.pc.setRemoteDescription(result.sessionDescription);
        await this.pc.setLocalDescription(await this.pc.createAnswer());
        await this.api("PUT", "/renegotiate", {
          sessionDescription: { type: "answer", sdp: this.pc.localDescription.sdp },
        });
      }
    });
  }

  drop(participantId) {
    const pulled = this.pulled.get(participantId);
    if (!pulled) return;
    this.pulled.delete(participantId);
    this.run(async () => {
      if (pulled.mids.length === 0) return;
      await this.api("PUT", "/tracks/close", {
        tracks: pulled.mids.map((mid) => ({ mid })),
        force: true,
      });
    });
  }

  close() {
    this.pc.close();
  }
}

// --- rendering ---------------------------------------------------------------------

function ensureTile(id) {
  let tile = document.querySelector(`.tile[data-participant-id="${CSS.escape(id)}"]`);
  if (!tile) {
    tile = document.createElement("div");
    tile.className = "tile";
    tile.dataset.participantId = id;
    const video = document.createElement("video");
    video.autoplay = true;
    video.playsInline = true;
    const label = document.createElement("span");
    label.className = "label";
    tile.append(video, label);
    $("#tiles").append(tile);
  }
  return tile;
}

function renderTile(id, participant) {
  const tile = ensureTile(id);
  tile.querySelector(".label").textContent = participant.name;
  tile.dataset.video = String(participant.video !== false);
  tile.dataset.audio = String(participant.audio !== false);
}

function attachStream(id, stream) {
  const video = ensureTile(id).querySelector("video");
  if (video.srcObject !== stream) video.srcObject = stream;
}

function setTileState(id, state) {
  const tile = document.querySelector(`.tile[data-participant-id="${CSS.escape(id)}"]`);
  if (tile) tile.dataset.connection = state;
}

function removeTile(id) {
  const tile = document.querySelector(`.tile[data-participant-id="${CSS.escape(id)}"]`);
  if (tile) tile.remove();
}

function renderParticipants(call) {
  const list = $("#participants");
  list.replaceChildren();
  const entries = [[call.me, { name: call.name, ...localState(call) }], ...call.participants];
  for (const [id, p] of entries) {
    const item = document.createElement("li");
    item.dataset.participantId = id;
    item.dataset.audio = String(p.audio !== false);
    item.dataset.video = String(p.video !== false);
    const name = document.createElement("span");
    name.className = id === call.me ? "name me" : "name";
    name.textContent = id === call.me ? `${p.name} (you)` : p.name;
    const mic = document.createElement("span");
    mic.className = "mic";
    mic.textContent = "mic";
    mic.title = p.audio !== false ? "microphone on" : "microphone muted";
    const cam = document.createElement("span");
    cam.className = "cam";
    cam.textContent = "cam";
    cam.title = p.video !== false ? "camera on" : "camera off";
    item.append(name, mic, cam);
    if (id !== call.me && mayModerate(call.grants)) item.append(...moderation(call, id, p));
    list.append(item);
  }
}

/** Whether to show moderation: a room admin that is not hidden (the service
 * lets no hidden participant moderate). */
function mayModerate(grants) {
  return grants.room_admin === true && grants.hidden !== true;
}

/** Mute and Remove buttons for a room admin, next to someone else. */
function moderation(call, id, p) {
  const mute = document.createElement("button");
  mute.type = "button";
  mute.className = "mute";
  mute.textContent = "Mute";
  mute.title = `Turn off ${p.name}'s microphone`;
  mute.disabled = p.audio === false;
  mute.onclick = () => {
    mute.disabled = true;
    call.moderate({ type: "mute", participant_id: id, kind: "audio" });
  };
  const remove = document.createElement("button");
  remove.type = "button";
  remove.className = "remove danger";
  remove.textContent = "Remove";
  remove.title = `Remove ${p.name} from the room`;
  remove.onclick = () => {
    remove.disabled = true;
    call.moderate({ type: "remove", participant_id: id });
  };
  return [mute, remove];
}

// --- pages ---------------------------------------------------------------------------

async function createView() {
  show("create-view");
  $("#create-form").onsubmit = async (event) => {
    event.preventDefault();
    showError("");
    // Two buttons: "Create room" (open) and "Create a private room" (secret).
    // Enter in a field submits with the first one: an open room, as before.
    const isPrivate = Boolean(event.submitter && event.submitter.value === "secret");
    const name = $("#room-name").value.trim() || "Call";
    try {
      const created = await http("POST", "/api/rooms", {
        name,
        max_participants: Number($("#room-max").value) || 10,
        ...(isPrivate ? { join_policy: "secret" } : {}),
      });
      if (isPrivate && !created.join_secret) throw new Error("The service made no private room.");
      // The secret is told once, here: from now on it lives in the link only.
      location.assign(roomLink(created.room_id, isPrivate ? created.join_secret : null, name));
    } catch (error) {
      showError(plainWords(error));
    }
  };
}

/** The title for a link's room, or `null` after saying why the link leads
 * nowhere. Only open rooms answer the GET (a private one is a 404 by design),
 * so a link with a secret does not ask, and one with a token falls back. */
async function roomTitle(link) {
  if (link.secret !== null) return link.name || "Private room";
  try {
    const room = await http("GET", `/api/rooms/${encodeURIComponent(link.roomId)}`);
    return room.name;
  } catch (error) {
    if (link.token) return "Private room";
    showError(await whyNot(link.roomId, error));
    return null;
  }
}

/** Why a link without a secret leads nowhere. The GET answers 404 alike for a
 * private room and a missing one; a join without a secret tells them apart
 * (403 with a code says private or invite-only) and, refused, creates nothing. */
async function whyNot(roomId, error) {
  if (!(error instanceof HttpError)) return plainWords(error);
  if (error.status === 400) return INVALID_LINK;
  if (error.status !== 404) return plainWords(error);
  try {
    await http("POST", `/api/rooms/${encodeURIComponent(roomId)}/join`, {});
  } catch (refused) {
    const coded = refused instanceof HttpError && refused.status === 403;
    if (coded && wordsFor(ERROR_WORDS, refused.code)) return ERROR_WORDS[refused.code];
  }
  return INVALID_LINK;
}

/** The join page; with `now`, joins at once (a link carrying a token). */
async function joinView(link, { now = false } = {}) {
  const title = await roomTitle(link);
  if (title === null) {
    createView();
    return;
  }
  $("#room-title").textContent = title;
  document.title = `${title} - Signaling call`;
  // A token is personal: its page has no link to share.
  $("#share").hidden = Boolean(link.token);
  if (!link.token) {
    const url = roomLink(link.roomId, link.secret, link.name);
    $("#share-link").textContent = url;
    $("#share-link").href = url;
    $("#copy-link").onclick = () => navigator.clipboard?.writeText(url);
  }
  const nameInput = $("#display-name");
  // A token names its holder; a join asks for a name.
  nameInput.readOnly = Boolean(link.token);
  nameInput.value = link.token
    ? tokenClaims(link.token).participant_name || "Guest"
    : localStorage.getItem("signaling.name") || "";
  show("join-view");
  const join = async (button) => {
    button.disabled = true;
    showError("");
    showNotice("");
    try {
      await startCall(link, nameInput.value.trim() || "Guest");
    } catch (error) {
      showError(plainWords(error));
      button.disabled = false;
    }
  };
  $("#join-form").onsubmit = (event) => {
    event.preventDefault();
    join(event.submitter || $("#join-form button"));
  };
  if (now) await join($("#join-form button"));
}

/** A token for the call: the join endpoint's (every right but room_admin), or
 * the one the link carries (minted by the app's backend, with its grants). */
async function admission(link, name) {
  if (!link.token) {
    const body = { participant_name: name };
    if (link.secret !== null) body.join_secret = link.secret;
    const joined = await http("POST", `/api/rooms/${encodeURIComponent(link.roomId)}/join`, body);
    return { ...joined, name, grants: {} };
  }
  const claims = tokenClaims(link.token);
  let ice = { iceServers: [] };
  try {
    ice = await http("GET", "/cloudflare/ice-servers", undefined, link.token);
  } catch (error) {
    // 503: neither Calls nor TURN here, so nothing to hand out; loopback and
    // LAN calls work without. Anything else (401: a bad token) stops here.
    if (!(error instanceof HttpError && error.status === 503)) throw error;
  }
  return {
    token: link.token,
    participant_id: claims.participant_id,
    name: claims.participant_name || "Guest",
    grants: claims.grants || {},
    ice_servers: ice.iceServers,
    ice_servers_ttl: ice.ttl,
  };
}

async function startCall(link, name) {
  if (!link.token) localStorage.setItem("signaling.name", name);
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: true });
  let joined;
  try {
    joined = await admission(link, name);
  } catch (error) {
    for (const track of stream.getTracks()) track.stop();
    throw error;
  }
  const call = new Call({
    roomId: link.roomId,
    token: joined.token,
    me: joined.participant_id,
    name: joined.name,
    grants: joined.grants,
    iceServers: joined.ice_servers || [],
    iceTtl: joined.ice_servers_ttl,
    stream,
  });
  debug.call = call;
  // Calls SFU when the service has it configured; 503 means it has not.
  try {
    const session = await http("POST", "/cloudflare/session", undefined, call.token);
    call.sfu = new SfuLink(call, session.sessionId);
  } catch (error) {
    if (!(error instanceof HttpError && error.status === 503)) {
      showError(`Calls SFU unavailable (${plainWords(error)}); using direct connections.`);
    }
  }
  debug.mode = call.sfu ? "sfu" : "p2p";
  $("#mode").textContent = call.sfu ? "via Cloudflare Calls (SFU)" : "direct (P2P)";
  show("call-view");
  const local = ensureTile(call.me);
  local.classList.add("local");
  const video = local.querySelector("video");
  video.muted = true;
  video.srcObject = stream;
  renderTile(call.me, { name: `${call.name} (you)`, ...localState(call) });
  renderParticipants(call);

  const audioButton = $("#toggle-audio");
  const videoButton = $("#toggle-video");
  audioButton.onclick = () => {
    const on = audioButton.getAttribute("aria-pressed") !== "true";
    audioButton.setAttribute("aria-pressed", String(on));
    audioButton.textContent = on ? "Mute mic" : "Unmute mic";
    call.setLocal("audio", on);
  };
  videoButton.onclick = () => {
    const on = videoButton.getAttribute("aria-pressed") !== "true";
    videoButton.setAttribute("aria-pressed", String(on));
    videoButton.textContent = on ? "Stop camera" : "Start camera";
    call.setLocal("video", on);
  };
  $("#leave").onclick = () => {
    call.leave();
    $("#tiles").replaceChildren();
    $("#participants").replaceChildren();
    joinView(link);
  };
  call.connect();
}

/** Which page the address asks for. A token link names its room in the token;
 * one that cannot be read, or names another room, is refused here (the
 * service would refuse it anyway, with less to say). */
function route() {
  const link = readLink();
  if (link.token) {
    const claims = tokenClaims(link.token);
    const readable =
      claims && typeof claims.room_id === "string" && typeof claims.participant_id === "string";
    const expired = readable && typeof claims.exp === "number" && claims.exp * 1000 < Date.now();
    if (!readable || expired || (link.roomId && link.roomId !== claims.room_id)) {
      showError(BAD_INVITATION);
      createView();
      return;
    }
    link.roomId = claims.room_id;
    link.secret = null;
    joinView(link, { now: true });
  } else if (link.roomId) {
    joinView(link);
  } else {
    createView();
  }
}

// A new fragment (a private room just made, or a link pasted into this tab)
// does not load the page again by itself: do, so it starts from the link.
window.addEventListener("hashchange", () => location.reload());
route();

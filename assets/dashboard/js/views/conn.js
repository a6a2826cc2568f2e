// The connection state in the top bar (#conn-state and the Reconnect button),
// and `window.herald`, the page's test and debugging hooks.

import { ui } from '../dom.js';

const CONN_LABELS = {
  live: 'live',
  reconnecting: 'reconnecting…',
  offline: 'offline',
};

// Test and debugging hooks. Fields are updated in place, never replaced.
export const herald = {
  feedConnections: 0, // EventSources ever opened (for the feed; the page opens no other)
  lastCursor: null, // the feed's last SSE id seen (an opaque string)
  state: 'reconnecting', // the connection state shown in #conn-state
};
window.herald = herald;

/** state: live, reconnecting or offline; `text` replaces its label. */
export function setConnState(state, text) {
  herald.state = state;
  ui.connState.dataset.state = state;
  ui.connState.textContent = text || CONN_LABELS[state] || state;
  ui.reconnect.hidden = state !== 'offline';
}

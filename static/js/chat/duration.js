// Durations and times left in the words a card uses. The server's filters
// (generation/templatetags/jobs.py: `duration`, `time_left`, `waiting_time`) say the
// same the same way, so the text the page was rendered with and the countdown that
// follows it agree; tests/chat/test_duration_text.py compares them for every second up
// to five and a half hours.

/** Seconds as whole seconds; halves round up, as floor(x + 0.5) does on both sides. */
function wholeSeconds(seconds) {
  // Math.round and Python's round() (which rounds halves to even) would disagree.
  return Math.max(Math.floor(Number(seconds) + 0.5), 0);
}

const unknown = (seconds) => seconds === null || seconds === undefined || seconds === "" || !Number.isFinite(wholeSeconds(seconds));

/** Seconds as a short, friendly duration ("about 45 s", "about 3 min"); "" when unknown. */
export function duration(seconds) {
  if (unknown(seconds)) return "";
  const whole = wholeSeconds(seconds);
  if (whole < 5) return "a few seconds";
  // Coarse steps, so the countdown does not chatter for screen readers.
  if (whole < 90) return `about ${Math.ceil(whole / 5) * 5} s`;
  if (whole < 5400) return `about ${Math.floor((whole + 30) / 60)} min`;
  const tenths = Math.floor((whole + 180) / 360);
  const [hours, tenth] = [Math.floor(tenths / 10), tenths % 10];
  return tenth ? `about ${hours}.${tenth} h` : `about ${hours} h`;
}

/** A running job's time left ("About 45 s left", "A few seconds left"); "Almost done…"
 * only once its progress says so too (90 % or more). "" when unknown. */
export function timeLeft(seconds, progress) {
  if (unknown(seconds)) return "";
  if (wholeSeconds(seconds) < 5 && Number(progress) >= 90) return "Almost done…";
  const text = duration(seconds);
  return `${text[0].toUpperCase()}${text.slice(1)} left`;
}

/** A queued job's wait ("Starts in about 45 s, ready in about 2 min"). "" when unknown. */
export function waitingTime(start, ready) {
  if (unknown(start) || unknown(ready)) return "";
  const when = Number(start) > 0 ? `Starts in ${duration(start)}` : "Starting soon";
  return `${when}, ready in ${duration(ready)}`;
}

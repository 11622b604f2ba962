// A duration in the words a card uses. The server's `duration` filter
// (generation/templatetags/jobs.py) says the same the same way, so the text the page
// was rendered with and the countdown that follows it agree; tests/chat/test_duration_text.py
// compares the two for every second up to five and a half hours.

/** Seconds as a short, friendly duration ("about 45 s", "about 3 min"); "" when unknown. */
export function duration(seconds) {
  if (seconds === null || seconds === undefined || seconds === "") return "";
  // Halves round up, as floor(x + 0.5) does on both sides: Math.round and Python's
  // round() (which rounds halves to even) would disagree.
  const whole = Math.max(Math.floor(Number(seconds) + 0.5), 0);
  if (!Number.isFinite(whole)) return "";
  if (whole < 5) return "a few seconds";
  // Coarse steps, so the countdown does not chatter for screen readers.
  if (whole < 90) return `about ${Math.ceil(whole / 5) * 5} s`;
  if (whole < 5400) return `about ${Math.floor((whole + 30) / 60)} min`;
  const tenths = Math.floor((whole + 180) / 360);
  const [hours, tenth] = [Math.floor(tenths / 10), tenths % 10];
  return tenth ? `about ${hours}.${tenth} h` : `about ${hours} h`;
}

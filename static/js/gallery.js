// The gallery ("My images"): an image opens in the viewer, with previous and next through
// the page's images, its settings, and what can be done with it.
import { bindViewer } from "./chat/viewer.js";

const viewer = document.querySelector("dialog.lightbox");
if (viewer) bindViewer(viewer);

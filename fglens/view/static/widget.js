/* fglens view as an anywidget (fglens/view/widget.py): the viewer's page runs in a sandboxed iframe, and each
 * of its requests ({fglens: 1, id, endpoint, params}, posted to this frame) is sent to the kernel tagged with
 * this view's token; the kernel's reply comes back as a custom message and is posted to the iframe. Replies
 * meant for another view of the same widget are left alone. */
function render({ model, el }) {
  const token = Math.random().toString(36).slice(2) + Date.now().toString(36);
  const frame = document.createElement("iframe");
  frame.setAttribute("sandbox", "allow-scripts");
  frame.setAttribute("title", "fglens view");
  frame.style.cssText = "width:100%;border:1px solid #ddd;height:" + model.get("height") + "px";
  frame.srcdoc = model.get("page");

  const fromPage = (event) => {
    const m = event.data;
    if (event.source !== frame.contentWindow || !m || m.fglens !== 1) return;
    model.send({ fglens: 1, id: m.id, view: token, endpoint: m.endpoint, params: m.params || {} });
  };
  const fromKernel = (m) => {
    if (!m || m.fglens !== 1 || m.view !== token || !frame.contentWindow) return;
    frame.contentWindow.postMessage(m, "*");
  };
  window.addEventListener("message", fromPage);
  model.on("msg:custom", fromKernel);
  el.appendChild(frame);
  return () => {
    window.removeEventListener("message", fromPage);
    model.off("msg:custom", fromKernel);
  };
}

export default { render };

// vaereg for ComfyUI's frontend: ComfyUI's own "Load VAE" node shows, beside each file, the VAE's name and
// "same weights as ..." (from GET /vaereg/v1/vaes). The value saved in a workflow stays the file name.
import { app } from "../../scripts/app.js";

let labels = null;

async function fetchLabels() {
    try {
        const response = await fetch("/vaereg/v1/vaes");
        labels = response.ok ? (await response.json()).labels : {};
    } catch (e) {
        labels = {};
    }
    return labels;
}

function annotate(node) {
    const widget = node.widgets?.find((w) => w.name === "vae_name");
    if (!widget) return;
    const label = (name) => (labels && labels[name] ? `${name}  (${labels[name]})` : name);
    // Frontends whose combo widgets take a display function show the annotation in the list itself;
    // the value kept (and saved) is the file name either way.
    widget.options = widget.options || {};
    widget.options.getOptionLabel = label;
    let note = node.widgets.find((w) => w.name === "vaereg");
    if (!note) {
        note = node.addWidget("text", "vaereg", "", () => {}, { serialize: false });
        note.disabled = true;
    }
    const show = () => { note.value = labels && labels[widget.value] ? labels[widget.value] : ""; };
    if (!widget.vaeregWrapped) {
        widget.vaeregWrapped = true;
        const previous = widget.callback;
        widget.callback = function () {
            const out = previous?.apply(this, arguments);
            show();
            return out;
        };
    }
    show();
}

app.registerExtension({
    name: "vaereg.vae-labels",
    async setup() {
        await fetchLabels();
    },
    async nodeCreated(node) {
        if (node.comfyClass !== "VAELoader") return;
        if (labels === null) await fetchLabels();
        annotate(node);
    },
    async refreshComboInNodes() {
        await fetchLabels();
        for (const node of app.graph._nodes.filter((n) => n.comfyClass === "VAELoader")) annotate(node);
    },
});

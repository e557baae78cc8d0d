// vaereg for the A1111 family: beside each file of the SD VAE list (Forge: "VAE / Text Encoder"), the VAE's
// name and "same weights as ..." (from GET /vaereg/v1/vaes). Only the text shown changes: the values, and so
// what the launcher loads, stay its own file names. Settings > vaereg > "VAE list" switches this off.
(function () {
    let labels = null;

    function vaeLists() {
        // gradio renders the open dropdown's choices as <ul class="options"><li> under the component's block
        const blocks = [];
        for (const block of gradioApp().querySelectorAll("#setting_sd_vae, #checpoint_edit_user_metadata_preferred_vae, .block")) {
            const label = block.querySelector("label span, span[data-testid='block-info']");
            const text = label ? label.textContent.trim() : "";
            if (block.id === "setting_sd_vae" || text === "SD VAE" || text === "VAE / Text Encoder" ||
                text === "Preferred VAE") {
                blocks.push(block);
            }
        }
        return blocks;
    }

    function annotate() {
        if (!labels) return;
        for (const block of vaeLists()) {
            // gradio 3 (A1111) marks each choice with data-value, gradio 4 (Forge) with aria-label
            for (const item of block.querySelectorAll("ul.options li")) {
                const note = labels[item.getAttribute("data-value") || item.getAttribute("aria-label")];
                if (!note || item.querySelector(".vaereg-note")) continue;
                const span = document.createElement("span");
                span.className = "vaereg-note";
                span.style.opacity = "0.65";
                span.style.marginLeft = "0.6em";
                span.textContent = note;
                item.appendChild(span);
            }
        }
    }

    async function load() {
        try {
            const response = await fetch("./vaereg/v1/vaes");
            const data = response.ok ? await response.json() : {};
            labels = data.mode === "annotate" ? data.labels || {} : null;
        } catch (e) {
            labels = null;
        }
        annotate();
    }

    // The page changes often (progress, previews): look at most once a frame, and only when a list is open.
    let scheduled = false;
    function onMutation() {
        if (scheduled || !labels) return;
        scheduled = true;
        requestAnimationFrame(function () {
            scheduled = false;
            if (gradioApp().querySelector("ul.options li")) annotate();
        });
    }

    onUiLoaded(function () {
        load();
        new MutationObserver(onMutation).observe(gradioApp(), { childList: true, subtree: true });
    });
})();

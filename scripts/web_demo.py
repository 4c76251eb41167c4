"""Web demo: chat in the browser with a saved MiniMind-V (or any image-text-to-text) checkpoint, fully offline.

    python scripts/web_demo.py --model DIR [--host 127.0.0.1 --port 7860]

Upload one or several images, ask questions over several turns and watch the answer stream in; temperature (0 means
greedy), top-p and max new tokens are adjustable and "Clear history" starts over. The page shows the model's name and
sizes. The model and processor load with the Auto classes and trust_remote_code, as a Hub user would load them; the
chat logic (messages, control-token-safe templating, streaming) is `processing.chat_session`.

The page makes no request beyond the server it came from: system fonts only, no analytics, no share link.
Needs the demo extra: pip install -e ".[demo]".
"""

import argparse
import base64
import html
import io
import logging
import os
import time
from pathlib import Path

# Gradio reads this when it is imported; the Blocks flag below covers the app, this covers the library too.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import gradio as gr  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForImageTextToText, AutoProcessor  # noqa: E402

from processing.chat_session import (  # noqa: E402
    ChatTurn,
    UnreadableImageError,
    build_messages,
    context_limit,
    describe_model,
    encode_chat,
    format_parameters,
    generation_kwargs,
    load_image,
    stream_reply,
)

logger = logging.getLogger("minimind_v.web_demo")

# System font stacks: the default theme's web fonts would be one more thing a locked-down browser might not fetch.
SANS = ["ui-sans-serif", "system-ui", "sans-serif"]
MONO = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"]
# Chat text is shown as typed, not as Markdown or HTML: a small model's output is not markup, and the page must show
# exactly what the model produced. Even with Markdown off the chatbot inserts HTML (sanitised), so text is escaped
# (see `as_text`) and pre-wrap keeps its spaces and newlines.
CSS = """
#chat .message-content { white-space: pre-wrap; }
#chat img.thumb { display: inline-block; height: 96px; width: auto; margin: 0 6px 4px 0; image-rendering: pixelated; }
"""
THUMBNAIL_PX = 256
MAX_ERROR_CHARS = 300


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="saved model folder (model + processor)")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0 exposes it to the network)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--system", default=None, help="optional system prompt")
    return parser.parse_args(argv)


def load(model_dir: str, device: str | None = None):
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=True)
    # bf16 on GPU halves memory; CPU kernels are fastest (and most accurate) in fp32.
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = AutoModelForImageTextToText.from_pretrained(model_dir, trust_remote_code=True, dtype=dtype)
    return model.to(device).eval(), processor


def model_card_markdown(info: dict) -> str:
    decoder = f"{info['decoder_layers']} layers, hidden {info['hidden_size']}, vocab {info['vocab_size']}"
    vision = f"{info['vision_type']}, {info['image_size']} px, patch {info['patch_size']}"
    return (
        f"### {info['name']}\n"
        f"**{format_parameters(info['parameters'])} parameters** ({info['parameters']:,}) · "
        f"decoder: {decoder}, context {info['context']} · vision: {vision} · "
        f"**{info['image_tokens']} image tokens** per image · {info['architecture']} on {info['device']} "
        f"({info['dtype']})"
    )


def as_text(text: str) -> str:
    """Chat-message content that the page shows literally (the chatbot would render it as HTML otherwise)."""
    return html.escape(text, quote=False)


def thumbnail_html(image, name: str) -> str:
    """An uploaded image as an inline data-URL <img> for the chat.

    Not a Gradio file message: those get a Share button that uploads the image to huggingface.co.
    """
    small = image.convert("RGB")
    small.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    buffer = io.BytesIO()
    small.save(buffer, format="PNG")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    label = html.escape(name)
    return f'<img class="thumb" alt="{label}" title="{label}" src="data:image/png;base64,{data}">'


def _short(error: Exception) -> str:
    text = str(error) or type(error).__name__
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS] + "…"


def build_app(model_dir: str, device: str | None = None, system: str | None = None) -> gr.Blocks:
    """The Gradio app for the checkpoint in `model_dir` (loaded once, shared by all sessions)."""
    model, processor = load(model_dir, device)
    info = describe_model(model, processor, name=Path(model_dir).resolve().name)
    limit = context_limit(model)

    def respond(message, display, turns, temperature, top_p, max_new_tokens):
        """One user turn: check the images, then stream the reply into the chat (a generator: Gradio streams it)."""
        message = message or {}
        text = (message.get("text") or "").strip()
        files = list(message.get("files") or [])
        display = list(display or [])
        if not text and not files:
            yield display, turns, gr.skip(), "Type a question or attach an image first."
            return

        names = [Path(path).name for path in files]
        images, problems = [], []
        for path in files:
            try:
                images.append(load_image(path))
            except UnreadableImageError as error:
                problems.append(str(error))
        if problems:
            # The turn never reaches the model, so the history the model sees stays as it was.
            shown = text + ("\n" if text else "") + " ".join(f"[{name}]" for name in names)
            notice = ("⚠ " + " ".join(problems) + " This message was not sent to the model; please attach PNG, "
                      "JPEG, WebP or another common image format.")
            display += [{"role": "user", "content": as_text(shown)}, {"role": "assistant", "content": as_text(notice)}]
            yield display, turns, gr.MultimodalTextbox(value=None), "Image rejected."
            return

        shown = "".join(thumbnail_html(image, name) for image, name in zip(images, names))
        display.append({"role": "user", "content": shown + ("\n" if shown and text else "") + as_text(text)})
        display.append({"role": "assistant", "content": ""})
        yield display, turns, gr.MultimodalTextbox(value=None, interactive=False), "Generating…"

        pending = [*turns, ChatTurn(text=text, images=images)]
        started = time.perf_counter()
        try:
            inputs = encode_chat(processor, build_messages(pending, system))
            prompt_tokens = inputs["input_ids"].shape[1]
            max_new = int(max_new_tokens)
            if limit is not None:
                if prompt_tokens >= limit:
                    raise ValueError(
                        f"the conversation is {prompt_tokens} tokens, more than this model's context of {limit}. "
                        "Press 'Clear history' to start over"
                    )
                max_new = min(max_new, limit - prompt_tokens)
            kwargs = generation_kwargs(float(temperature), float(top_p), max_new)
            for update in stream_reply(model, processor, inputs, **kwargs):
                display[-1] = {"role": "assistant", "content": as_text(update.text)}
                if update.done:
                    break
                yield display, turns, gr.skip(), "Generating…"
        except Exception as error:  # shown in the chat as one line; the traceback goes to the server log only
            logger.exception("generation failed")
            display[-1] = {"role": "assistant", "content": as_text(f"⚠ Sorry, that did not work: {_short(error)}.")}
            yield display, turns, gr.MultimodalTextbox(interactive=True), "Generation failed."
            return

        elapsed = time.perf_counter() - started
        pending[-1].reply = update.text
        rate = update.num_tokens / elapsed if elapsed > 0 else 0.0
        status = (f"Turn {len(pending)} answered: {update.num_tokens} new tokens in {elapsed:.1f} s "
                  f"({rate:.1f} tokens/s), prompt {prompt_tokens} tokens.")
        yield display, pending, gr.MultimodalTextbox(interactive=True), status

    def clear():
        return [], [], gr.MultimodalTextbox(value=None, interactive=True), "History cleared."

    with gr.Blocks(title=f"MiniMind-V · {info['name']}", analytics_enabled=False) as app:
        gr.Markdown(model_card_markdown(info), elem_id="model-info")
        turns = gr.State([])  # list[ChatTurn]: what the model sees, images included
        with gr.Row():
            with gr.Column(scale=4):
                chatbot = gr.Chatbot(
                    elem_id="chat", label="Chat", height=460, render_markdown=False, latex_delimiters=[],
                    # No copy buttons: they would copy the escaped text; no share button: it posts to the Hub.
                    buttons=[], feedback_options=None, allow_file_downloads=False, allow_tags=False,
                )
                box = gr.MultimodalTextbox(
                    elem_id="prompt", file_count="multiple", sources=["upload"], show_label=False,
                    placeholder="Attach one or more images and ask about them (Enter sends)",
                )
                status = gr.Markdown("Ready.", elem_id="status")
            with gr.Column(scale=1, min_width=220):
                temperature = gr.Slider(0.0, 2.0, value=0.7, step=0.05, label="Temperature (0 = greedy)",
                                        elem_id="temperature")
                top_p = gr.Slider(0.05, 1.0, value=0.9, step=0.05, label="Top-p", elem_id="top-p")
                max_new_tokens = gr.Slider(1, 1024, value=128, step=1, label="Max new tokens",
                                           elem_id="max-new-tokens")
                clear_button = gr.Button("Clear history", elem_id="clear")
        answer = box.submit(
            respond, [box, chatbot, turns, temperature, top_p, max_new_tokens], [chatbot, turns, box, status],
            show_progress="hidden",
        )
        # Cancelling closes the reply generator, which stops generate at the next token.
        clear_button.click(clear, None, [chatbot, turns, box, status], cancels=[answer])
        chatbot.clear(clear, None, [chatbot, turns, box, status], cancels=[answer])  # the chatbot's own bin icon
    return app


def launch(app: gr.Blocks, host: str, port: int) -> None:
    """Serve `app` locally; everything that could reach beyond this machine (share links, telemetry, MCP) is off."""
    app.queue(default_concurrency_limit=1)  # one generate at a time: sessions share one model
    app.launch(
        server_name=host, server_port=port, share=False, show_error=False,
        # Gradio 6 takes the theme and CSS here rather than in Blocks().
        theme=gr.themes.Default(font=SANS, font_mono=MONO), css=CSS,
        footer_links=["settings"], run_history=False, mcp_server=False, enable_monitoring=False, ssr_mode=False,
        pwa=False,
    )


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    launch(build_app(args.model, args.device, args.system), args.host, args.port)


if __name__ == "__main__":
    main()

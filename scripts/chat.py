"""CLI: chat with a saved MiniMind-V model about one image, streaming the answer.

    python scripts/chat.py --model DIR_OR_REPO --image cat.png --prompt "What is in the picture?"
    python scripts/chat.py --model DIR_OR_REPO --image cat.png          # multi-turn: one question per line

The model and processor load through the Auto classes with trust_remote_code, exactly as a Hub user would load them,
so this script needs nothing from this repository. Without --prompt, questions are read from stdin until EOF or
"exit"; the conversation history is kept and the image is attached to the first question only.

Flags and the image are checked before the model loads (a bad one exits with status 2 and says which); what the user
types is encoded as plain text, so control tokens in it (`<|im_start|>`, `<|vision_start|>`, ...) cannot open a turn
or an image slot.
"""

import argparse
import inspect
import os
import re
import sys

import PIL.Image
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, TextStreamer

EXIT_WORDS = {"exit", "quit"}
HUB_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="saved model folder or Hub repo id (model + processor)")
    parser.add_argument("--image", required=True, help="path of the image to talk about")
    parser.add_argument("--prompt", default=None, help="one question; without it, read questions from stdin")
    parser.add_argument("--system", default=None, help="optional system prompt")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.7, help="0 means greedy decoding")
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    args = parser.parse_args(argv)
    problem = check_args(args)
    if problem:
        parser.error(problem)
    return args


def check_args(args: argparse.Namespace) -> str | None:
    """What is wrong with the flags (None: usable), checked before anything loads."""
    if args.temperature < 0 or args.temperature != args.temperature:
        return f"--temperature must be >= 0 (0 means greedy decoding), got {args.temperature}"
    if not 0 < args.top_p <= 1:
        return f"--top-p must be in (0, 1], got {args.top_p}"
    if args.max_new_tokens < 1:
        return f"--max-new-tokens must be >= 1, got {args.max_new_tokens}"
    if os.path.isdir(args.model):
        if not os.path.isfile(os.path.join(args.model, "config.json")):
            return f"--model {args.model}: the folder has no config.json (expected a save_pretrained folder)"
    elif os.path.exists(args.model) or not HUB_REPO_ID.match(args.model):
        return f"--model {args.model}: no such model folder, and not a Hub repo id of the form namespace/name"
    if not os.path.isfile(args.image):
        return f"--image {args.image}: no such file"
    return None


def read_image(path: str) -> PIL.Image.Image:
    """The image at `path`, fully decoded (PIL opens lazily: a truncated file would only fail inside generate)."""
    try:
        with PIL.Image.open(path) as opened:
            opened.load()
            return opened.copy()
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, ... for bad files
        raise ValueError(f"--image {path}: not a readable image ({error})") from error


def load(model_path: str, device: str):
    processor = AutoProcessor.from_pretrained(model_path, trust_remote_code=True)
    # bf16 on GPU halves memory; CPU kernels are fastest (and most accurate) in fp32.
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = AutoModelForImageTextToText.from_pretrained(model_path, trust_remote_code=True, dtype=dtype)
    return model.to(device).eval(), processor


def answer(model, processor, messages: list[dict], args: argparse.Namespace) -> str:
    """Generate (and stream to stdout) the assistant's reply to `messages`; return the reply text."""
    # Typed text is plain text, never markup; said explicitly for processors whose own default does not sanitise.
    sanitize = ({"sanitize_control_tokens": True}
                if "sanitize_control_tokens" in inspect.signature(processor.apply_chat_template).parameters else {})
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt", **sanitize
    ).to(model.device)
    streamer = TextStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
    sampling = {"do_sample": True, "temperature": args.temperature, "top_p": args.top_p} if args.temperature > 0 else {
        "do_sample": False
    }
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=args.max_new_tokens, streamer=streamer, **sampling)
    new_tokens = output[0, inputs["input_ids"].shape[1]:]
    return processor.tokenizer.decode(new_tokens, skip_special_tokens=True)


def user_turn(text: str, image: PIL.Image.Image | None) -> dict:
    content = [{"type": "image", "image": image}] if image is not None else []
    return {"role": "user", "content": content + [{"type": "text", "text": text}]}


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.seed is not None:
        torch.manual_seed(args.seed)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        image = read_image(args.image)  # before the model: a bad image costs no load
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    model, processor = load(args.model, device)
    messages = [{"role": "system", "content": args.system}] if args.system else []

    if args.prompt is not None:
        messages.append(user_turn(args.prompt, image))
        answer(model, processor, messages, args)
        return

    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print("> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line:  # EOF
            break
        question = line.strip()
        if question.lower() in EXIT_WORDS:
            break
        if not question:
            continue
        # The image belongs to the first question only; later turns refer back to it through the history.
        first = not any(message["role"] == "user" for message in messages)
        messages.append(user_turn(question, image if first else None))
        reply = answer(model, processor, messages, args)
        messages.append({"role": "assistant", "content": reply})


if __name__ == "__main__":
    main()

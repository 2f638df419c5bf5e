"""The chat templates of the native VLM families, written out as the released checkpoints format conversations.

Messages use the processor format: `{"role": ..., "content": [{"type": "image"}, {"type": "text", "text": ...}]}`
(a plain string content is accepted too). Each template places an image where its part sits in the content
and closes every assistant turn with the family's end-of-turn token (`END_OF_TURN`), which the labels
supervise so that the model learns to stop. Notes on where a template departs from a released one:

- llava: the LLaVA-1.5 (vicuna v1) format the model was trained with, `USER: ... ASSISTANT: answer</s>`;
  the llava-hf template omits the `</s>`, which would teach the model never to stop.
- paligemma: a prefix-LM without a chat template; the prefix is the user text and the suffix the answer
  followed by `<eos>` (the processor itself adds `<bos>` after the images and `\\n` after the prefix).
"""

from __future__ import annotations

# Jinja pieces shared by the templates: a message's content as a list of parts.
_PARTS = "{% set parts = message['content'] if message['content'] is not string else [{'type': 'text', 'text': message['content']}] %}"  # noqa: E501


def _content(image: str) -> str:
    """Jinja that renders the parts of `message` in order, an image as `image`."""
    return (
        _PARTS + "{% for part in parts %}"
        "{% if part['type'] == 'image' %}{{ '" + image + "' }}"
        "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
        "{% endfor %}"
    )


def _chatml(image: str, default_system: str | None) -> str:
    system = ""
    if default_system is not None:
        system = (
            "{% if messages[0]['role'] != 'system' %}"
            "{{ '<|im_start|>system\\n" + default_system + "<|im_end|>\\n' }}{% endif %}"
        )
    return (
        system + "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
        + _content(image) + "{{ '<|im_end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )  # fmt: skip


QWEN2_VL = _chatml("<|vision_start|><|image_pad|><|vision_end|>", "You are a helpful assistant.")
QWEN3_VL = _chatml("<|vision_start|><|image_pad|><|vision_end|>", None)  # Instruct: no default system turn
LLAVA_ONEVISION = _chatml("<image>\\n", None)
LLAVA = (
    "{{ '<s>' }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}" + _content("") + "{{ ' ' }}"
    "{% elif message['role'] == 'user' %}{{ 'USER: ' }}" + _content("<image>\\n") + "{{ ' ' }}"
    "{% else %}{{ 'ASSISTANT: ' }}" + _content("") + "{{ '</s>' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
LLAVA_NEXT = (  # llava-v1.6-mistral: [INST] ... [/INST] answer</s>
    "{{ '<s>' }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}" + _content("") + "{{ '\\n\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' }}" + _content("<image>\\n") + "{{ ' [/INST]' }}"
    "{% else %}{{ ' ' }}" + _content("") + "{{ '</s>' }}{% endif %}"
    "{% endfor %}"
)
IDEFICS3 = (  # SmolVLM / Idefics3: User:<image>question<end_of_utterance>\nAssistant: answer<end_of_utterance>\n
    "{{ '<|im_start|>' }}{% for message in messages %}{{ message['role'] | capitalize }}"
    + _PARTS + "{{ ':' if parts[0]['type'] == 'image' else ': ' }}"
    + _content("<image>") + "{{ '<end_of_utterance>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)  # fmt: skip
GEMMA3 = (  # system text joins the first user turn; the assistant role is called "model"
    "{{ '<bos>' }}{% set system = namespace(text='') %}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{% set system.text = (" + "message['content'] if message['content'] "
    "is string else message['content'][0]['text']) + '\\n\\n' %}"
    "{% else %}{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else 'user') + '\\n' }}"
    "{% if message['role'] == 'user' %}{{ system.text }}{% set system.text = '' %}{% endif %}"
    + _content("<start_of_image>") + "{{ '<end_of_turn>\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)  # fmt: skip
PALIGEMMA = (
    "{% for message in messages %}{% if message['role'] == 'assistant' %}"
    "{{ '\\n' }}" + _content("") + "{{ '<eos>' }}"
    "{% elif message['role'] == 'user' %}" + _content("<image>") + "{% endif %}{% endfor %}"
)

TEMPLATES = {
    "llava": LLAVA,
    "llava_next": LLAVA_NEXT,
    "llava_onevision": LLAVA_ONEVISION,
    "qwen2_vl": QWEN2_VL,
    "qwen2_5_vl": QWEN2_VL,
    "qwen3_vl": QWEN3_VL,
    "idefics3": IDEFICS3,
    "paligemma": PALIGEMMA,
    "gemma3": GEMMA3,
}
# The token that closes an assistant turn (supervised); what the template writes after it is not.
END_OF_TURN = {
    "llava": "</s>",
    "llava_next": "</s>",
    "llava_onevision": "<|im_end|>",
    "qwen2_vl": "<|im_end|>",
    "qwen2_5_vl": "<|im_end|>",
    "qwen3_vl": "<|im_end|>",
    "idefics3": "<end_of_utterance>",
    "paligemma": "<eos>",
    "gemma3": "<end_of_turn>",
}

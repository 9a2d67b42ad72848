"""Chat templates render in a sandbox; a model without one gets the documented fallback."""

from __future__ import annotations

import pytest

from seekserve.chat.template import ChatTemplate
from seekserve.protocol.errors import InvalidRequestError

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


def test_fallback_template_labels_roles() -> None:
    text = ChatTemplate(None).render(MESSAGES, add_generation_prompt=True, bos_token="<s>",
                                     eos_token="</s>")
    assert text == "System: Be brief.\n\nUser: Hi\n\nAssistant:"


def test_model_template_gets_the_usual_variables() -> None:
    source = ("{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m.content | tojson }}"
              "{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}")
    text = ChatTemplate(source).render(MESSAGES, add_generation_prompt=True, bos_token="<s>",
                                       eos_token="</s>")
    assert text == '<s>[system]"Be brief."[user]"Hi"[assistant]'


def test_template_raise_exception_is_a_400() -> None:
    source = "{{ raise_exception('Conversation roles must alternate') }}"
    with pytest.raises(InvalidRequestError, match="roles must alternate") as err:
        ChatTemplate(source).render(MESSAGES, add_generation_prompt=True, bos_token="",
                                    eos_token="")
    assert err.value.param == "messages"


def test_sandbox_blocks_python_internals() -> None:
    source = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(InvalidRequestError):
        ChatTemplate(source).render(MESSAGES, add_generation_prompt=False, bos_token="",
                                    eos_token="")

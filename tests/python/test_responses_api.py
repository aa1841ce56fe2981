"""`POST /v1/responses` through the official `openai` SDK's
`client.responses.create` (and its `responses.stream` helper, which checks
the events' consistency), against the real gateway binary with simulated
workers.

The function-tool tests rely on the sim backend's scripted tool calls: with
tools offered and `call:<name>` (optionally `args:{...}`) in the last user
turn it answers one call of that tool; with a tool result last it answers
"The tool said: <content>"."""

import json

import openai
import pytest

KEY_PARAMS = {"max_retries": 0, "timeout": 20}

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather now in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "strict": True,
}


@pytest.fixture(scope="module")
def sdk(mesh):
    return openai.OpenAI(base_url=mesh.http + "/v1", api_key="not-checked", **KEY_PARAMS)


def test_text_input_answers_with_output_text_usage_and_headers(sdk):
    raw = sdk.responses.with_raw_response.create(
        model="router", input="What is 2+2?", instructions="Answer briefly.", max_output_tokens=8, store=False
    )
    resp = raw.parse()
    assert resp.object == "response"
    assert resp.id == "resp_" + raw.headers["x-request-id"]
    assert resp.model in ("small-model", "large-model") and raw.headers["x-routemesh-model"] == resp.model
    assert resp.status in ("completed", "incomplete")
    assert resp.output_text.startswith(f"[simulated {resp.model}]")
    message = resp.output[0]
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert message.content[0].type == "output_text" and message.content[0].annotations == []
    assert resp.usage.output_tokens > 0 and resp.usage.input_tokens > 0
    assert resp.usage.total_tokens == resp.usage.input_tokens + resp.usage.output_tokens
    assert resp.usage.input_tokens_details.cached_tokens == 0
    assert resp.usage.output_tokens_details.reasoning_tokens == 0
    assert resp.instructions == "Answer briefly." and resp.tools == [] and resp.tool_choice == "auto"
    assert resp.error is None


def test_cut_short_answer_is_incomplete(sdk):
    resp = sdk.responses.create(model="small-model", input="Tell me a long story.", max_output_tokens=3)
    assert resp.status == "incomplete"
    assert resp.incomplete_details.reason == "max_output_tokens"
    assert resp.usage.output_tokens == 3
    assert resp.output[0].status == "incomplete"


def test_messages_with_parts_and_routing_hints(sdk):
    resp = sdk.responses.create(
        model="router",
        input=[
            {"role": "developer", "content": "Be terse."},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hello"}]},
        ],
        max_output_tokens=4,
        metadata={"team": "blue"},
        extra_body={"routing": {"allowed_tiers": ["small"]}},
    )
    assert resp.model == "small-model"
    assert resp.metadata == {"team": "blue"}
    assert resp.output_text


def test_streamed_events_end_with_the_whole_response(sdk):
    stream = sdk.responses.create(model="small-model", input="Tell me a story.", max_output_tokens=1024, stream=True)
    events = list(stream)
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done", "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert deltas and all(d.output_index == 0 and d.content_index == 0 for d in deltas)
    text = "".join(d.delta for d in deltas)
    assert text.startswith("[simulated small-model]")
    done = events[-1].response
    assert done.status == "completed" and done.output_text == text
    assert done.id == events[0].response.id and events[0].response.status == "in_progress"
    assert done.usage.output_tokens == len(deltas)
    assert deltas[0].item_id == done.output[0].id


def test_stream_helper_accepts_the_events(sdk):
    """`responses.stream` rebuilds the response from the events and refuses
    inconsistent ones (ids, indices, items left open)."""
    with sdk.responses.stream(model="small-model", input="Hello there", max_output_tokens=1024) as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert final.output_text == text and text.startswith("[simulated small-model]")


def test_streamed_cut_short_answer_ends_incomplete(sdk):
    events = list(sdk.responses.create(model="small-model", input="A long story please.", max_output_tokens=3, stream=True))
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"


def test_errors_are_openai_shaped_and_name_the_field(sdk):
    with pytest.raises(openai.BadRequestError) as err:
        sdk.responses.create(model="router", input="hi", extra_body={"reasoning_mode": "deep"})
    assert err.value.body["param"] == "reasoning_mode" and "unknown field" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        sdk.responses.create(model="router", input="hi", store=True)
    assert err.value.body["param"] == "store"
    with pytest.raises(openai.BadRequestError) as err:
        sdk.responses.create(model="router", input="hi", previous_response_id="resp_123")
    assert err.value.body["param"] == "previous_response_id"
    with pytest.raises(openai.BadRequestError) as err:
        sdk.responses.create(model="router", input="hi", tools=[{"type": "web_search"}])
    assert err.value.body["param"] == "tools[0].type"
    with pytest.raises(openai.NotFoundError) as err:
        sdk.responses.create(model="gpt-17", input="hi")
    assert "gpt-17" in err.value.message


# --- Function tools: these need the sim backend's scripted tool calls. ---


def test_function_tool_call_and_its_output_round_trip(sdk):
    conversation = [{"role": "user", "content": 'What is the weather? call:get_weather args:{"city": "Paris"}'}]
    first = sdk.responses.create(model="small-model", input=conversation, tools=[WEATHER])
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1, first.output
    call = calls[0]
    assert call.name == "get_weather" and call.call_id.startswith("call_") and call.id.startswith("fc_")
    assert json.loads(call.arguments) == {"city": "Paris"}
    assert call.status == "completed" and first.status == "completed"
    assert first.tools[0].name == "get_weather"

    # The SDK's way: the previous output items go back as input, then the result.
    conversation += first.output
    conversation.append({"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"})
    second = sdk.responses.create(model="small-model", input=conversation, tools=[WEATHER])
    assert "The tool said: sunny, 21 C" in second.output_text
    assert [item.type for item in second.output] == ["message"]


def test_streamed_function_call(sdk):
    events = list(
        sdk.responses.create(
            model="small-model",
            input='call:get_weather args:{"city": "Oslo"}',
            tools=[WEATHER],
            tool_choice="required",
            stream=True,
        )
    )
    kinds = [e.type for e in events]
    assert "response.function_call_arguments.done" in kinds and kinds[-1] == "response.completed"
    added = next(e for e in events if e.type == "response.output_item.added" and e.item.type == "function_call")
    assert added.item.name == "get_weather" and added.item.status == "in_progress"
    args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta" and e.output_index == added.output_index)
    assert json.loads(args) == {"city": "Oslo"}
    final = events[-1].response
    call = next(item for item in final.output if item.type == "function_call")
    assert call.arguments == args and call.call_id == added.item.call_id

"""The data stages' prompt templates: each carries the instructions the method consists of
(the paper's construct and search prompts, in our own words), in English and in Chinese; the stages fill every
placeholder; and the stand-in teacher still recognises what each prompt asks for."""

import re

import pytest

from huatuo_o1 import construct, search
from huatuo_o1.teacher_prompts import load_prompts, render
from tests.standin_teacher import Teacher as StandinTeacher

STRATEGY_NAMES = {
    "en": {
        "strategy_backtracking": "Backtracking:",
        "strategy_exploring_new_paths": "Exploring New Paths:",
        "strategy_verification": "Verification:",
        "strategy_correction": "Correction:",
    },
    "zh": {
        "strategy_backtracking": "回溯（Backtracking）",
        "strategy_exploring_new_paths": "探索新思路（Exploring New Paths）",
        "strategy_verification": "逐项核查（Verification）",
        "strategy_correction": "纠正（Correction）",
    },
}

# Key phrases per template and language: one per instruction the method names.
REQUIRED = {
    "en": {
        # natural rewrite: human-like intuitive thinking, one thought per line, no titles or structure,
        # casual transitions and self-checks, expanded (richer, more detailed) yet conversational
        "natural": [
            "human-like",
            "intuitive",
            "one thought per line",
            "line break",
            "no titles",
            "structure",
            '"hmm"',
            '"oh"',
            '"also"',
            '"wait"',
            "Expand the reasoning",
            "richer",
            "more detailed",
            "conversational",
        ],
        # final response: rich and high-quality, built on the thinking, clear answer first, close to the
        # question, in a strong general assistant's (GPT-4's) style
        "final_response": [
            "rich, high-quality final response",
            "Building on it",
            "If there is a clear answer, state it first",
            "Stay close to the Question",
            "strong general-purpose assistant such as GPT-4",
            "Output only this final response",
        ],
        # initial reasoning: several titled Inner Thinking steps, Final Conclusion, a Verification that
        # ends the process if the conclusion holds, otherwise returns to Inner Thinking
        "reason": [
            "several Inner Thinking steps",
            'short "title"',
            '"Final Conclusion": sum up',
            "If the conclusion holds, the process ends there",
            "go back to Inner Thinking",
            "end with an Inner Thinking step, then the Final Conclusion, then the Verification",
        ],
        # strategy rounds: the conclusion was checked and is false, the next Verification agrees, then the strategy;
        # the reply starts at that Verification
        "strategy": [
            "I have checked that Final Conclusion and it is false",
            "Continue the list from its next Verification",
            "must agree with my check",
            "with this strategy",
            "Write only the new actions",
            'First a "Verification" action that states that the previous Final Conclusion is false',
        ],
        # label round: the reference answer told in secret, the model pretends not to know it
        "label_hint": [
            "tell you a secret",
            "You must pretend not to know it",
            "Never mention, quote or allude",
            "agrees with the reference answer",
            "Continue the list from its next Verification",
        ],
        "filter": ['"Too Simple"', '"Ambiguous Answer"', '"Not Reformulatable"', '"Pass"'],
        "reformat": [
            "open-ended question",
            "drops the options",
            "exactly one correct answer",
            "as briefly as possible",
            "exactly these two keys",
        ],
        "verify": ["True if it matches, False if it does not"],
    },
    "zh": {
        "natural": [
            "像人一样",
            "凭直觉",
            "每行一个想法",
            "换行",
            "不要标题",
            "其他结构",
            "“嗯”",
            "“哦”",
            "“还有”",
            "“等等”",
            "扩展推理内容",
            "更丰富",
            "更详细",
            "口语化",
            "用中文",
        ],
        "final_response": [
            "丰富、高质量的最终回答",
            "在此基础上",
            "如果有明确的答案，先给出答案",
            "紧扣 Question",
            "GPT-4 这类优秀通用助手的风格",
            "只输出这个最终回答",
            "用中文",
        ],
        "reason": [
            "多个 Inner Thinking 步骤",
            '简短的 "title"',
            "总结前面步骤中正确的推理并给出答案",
            "如果结论成立，过程就到此结束",
            "回到 Inner Thinking",
            "用中文书写内容",
        ],
        "strategy": [
            "我已经核查过这个 Final Conclusion，它是错误的",
            "从接下来的 Verification 继续",
            "必须与我的核查结果一致",
            "用以下策略改进推理",
            "只写接在之前动作后面的新动作",
            '先写一个 "Verification" 动作，说明之前的 Final Conclusion 是错误的',
            "用中文书写内容",
        ],
        "label_hint": [
            "悄悄告诉你",
            "必须假装不知道",
            "绝不能提及、引用或暗示",
            "与参考答案一致",
            "从接下来的 Verification 继续",
        ],
        "filter": ['"Too Simple"', '"Ambiguous Answer"', '"Not Reformulatable"', '"Pass"'],
        "reformat": ["开放式问题", "去掉选项", "唯一正确的答案", "尽可能简短", "只使用下面两个键"],
        "verify": ["一致回复 True，不一致回复 False"],
    },
}

# What the stand-in teacher must take each prompt for (it recognises prompts by their fixed words).
STANDIN_KIND = {
    "filter": "filter",
    "reformat": "reformat",
    "reason": "cot",
    "label_hint": "cot",
    "verify": "verify",
    "natural": "natural",
    "final_response": "response",
    **{name: "cot" for name in search.STRATEGIES.values()},
}
ALL_PROMPTS = {**construct.PROMPTS, **search.PROMPTS}


def squash(text):
    return re.sub(r"\s+", " ", text)


@pytest.mark.parametrize("language", ["en", "zh"])
def test_every_prompt_carries_the_instructions_of_the_method(language):
    prompts = load_prompts(ALL_PROMPTS, language)
    for name, text in prompts.items():
        phrases = REQUIRED[language]["strategy" if name.startswith("strategy_") else name]
        if name.startswith("strategy_"):
            phrases = phrases + [STRATEGY_NAMES[language][name]]
        missing = [phrase for phrase in phrases if squash(phrase) not in squash(text)]
        assert not missing, f"prompts/{language}/{name}.txt lacks {missing}"
    if language == "zh":  # Chinese prompts ask for Chinese text
        assert all(re.search(r"[\u4e00-\u9fff]", text) for text in prompts.values())


@pytest.mark.parametrize("language", ["en", "zh"])
def test_the_stages_fill_every_placeholder_and_the_standin_recognises_each_prompt(language):
    prompts = load_prompts(ALL_PROMPTS, language)
    for name, text in prompts.items():
        used = set(re.findall(r"\{(\w+)\}", text))
        assert used == set(ALL_PROMPTS[name]), f"prompts/{language}/{name}.txt: placeholders {used}"
        filled = render(text, **{p: f"<{p} value>" for p in ALL_PROMPTS[name]})
        assert not re.search(r"\{\w+\}", filled) and all(f"<{p} value>" in filled for p in ALL_PROMPTS[name])
        assert StandinTeacher.kind_of(filled) == STANDIN_KIND[name], f"the stand-in misreads {language}/{name}"


def test_a_template_without_a_required_instruction_fails_the_check(tmp_path):
    # The check itself can fail: the English natural rewrite without its casual-transition sentence.
    text = load_prompts({"natural": ALL_PROMPTS["natural"]}, "en")["natural"]
    cut = re.sub(r"Let each thought lead.*?\"wait\"\.", "", text)
    assert cut != text
    missing = [p for p in REQUIRED["en"]["natural"] if squash(p) not in squash(cut)]
    assert missing == ['"hmm"', '"oh"', '"also"', '"wait"']

"""The learned safety layers: the labeled sets, training, the shipped models, levels and context."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest
from hydra.utils import instantiate

from hamdam.chat.engine import ChatEngine, Conversation
from hamdam.errors import DataError
from hamdam.safety.context import ContextPolicy, SessionRisk
from hamdam.safety.detector import LayeredDetector
from hamdam.safety.guard import SafetyGuard
from hamdam.safety.lang import detect_lang
from hamdam.safety.model import LinearTextModel, NgramAnalyzer, load_model, model_text
from hamdam.safety.rules import SafetyRules
from hamdam.safety.train import LinearTrainer, load_labeled, sha256

from conftest import REPO, engine_with, run_hamdam

SAFETY = REPO / "corpus" / "safety"
CRISIS_TRAIN = sorted((SAFETY / "crisis").glob("train_*.jsonl"))
CRISIS_TEST = SAFETY / "crisis" / "test.jsonl"
REPLY_TRAIN = sorted((SAFETY / "replies").glob("train*.jsonl"))
REPLY_TEST = SAFETY / "replies" / "test.jsonl"
CRISIS_KINDS = {"passive_death_wish", "indirect_ending", "reunion", "survivor_guilt", "method_plan", "explicit"}
SAFE_KINDS = {
    "hyperbole",
    "grave_visit",
    "medication",
    "finished_not_life",
    "ongoing_grief",
    "negation",
    "afterlife_faith",
    "everyday",
}


@pytest.fixture(scope="module")
def crisis_train():
    return load_labeled(CRISIS_TRAIN)


def test_crisis_labeled_set_covers_every_kind_in_every_language(crisis_train):
    examples = crisis_train + load_labeled([CRISIS_TEST])
    assert len(examples) >= 1500
    assert sum(e.label for e in examples) >= 600
    langs = Counter(e.lang for e in examples)
    assert set(langs) == {"fa", "en", "zh"} and langs["fa"] / len(examples) >= 0.6
    for lang in ("fa", "en", "zh"):
        kinds = {e.kind for e in examples if e.lang == lang}
        assert CRISIS_KINDS | SAFE_KINDS <= kinds, (lang, (CRISIS_KINDS | SAFE_KINDS) - kinds)
    for e in examples:
        assert e.kind in (CRISIS_KINDS if e.label else SAFE_KINDS), e
        assert e.family
    finglish = [e for e in examples if e.variant == "finglish"]
    assert len({e.family for e in finglish}) >= 10 and {0, 1} <= {e.label for e in finglish}


def test_test_split_shares_no_family_and_no_message_with_training(crisis_train):
    for train, test in (
        (crisis_train, load_labeled([CRISIS_TEST])),
        (load_labeled(REPLY_TRAIN), load_labeled([REPLY_TEST])),
    ):
        assert not {e.family for e in train} & {e.family for e in test}
        assert not {model_text(e.text) for e in train} & {model_text(e.text) for e in test}


def test_reply_red_team_set_has_200_unsafe_replies_of_each_kind_and_hard_negatives():
    examples = load_labeled([*REPLY_TRAIN, REPLY_TEST])
    unsafe = Counter(e.kind for e in examples if e.label)
    assert sum(unsafe.values()) >= 200 and len(unsafe) == 3 and min(unsafe.values()) >= 50
    assert sum(1 for e in examples if not e.label) >= 200


@pytest.mark.parametrize("name, files", [("crisis", CRISIS_TRAIN), ("reply", REPLY_TRAIN)])
def test_shipped_model_is_versioned_with_its_labeled_data(name, files):
    """Changing a labeled file without `hamdam safety train` fails here: model and data move together."""
    meta = load_model(name).meta
    assert meta["data"] == {f.relative_to(REPO).as_posix(): sha256(f) for f in files}
    assert "test.jsonl" not in json.dumps(meta["data"])  # the held-out split is never trained on


def test_training_is_deterministic_and_reproduces_the_shipped_model():
    examples = load_labeled(REPLY_TRAIN)
    first, second = LinearTrainer(concepts="reply").fit(examples), LinearTrainer(concepts="reply").fit(examples)
    assert first.to_json() == second.to_json()
    shipped = load_model("reply")
    assert shipped.weights.keys() == first.weights.keys()
    assert math.isclose(shipped.bias, first.bias, abs_tol=1e-5)
    assert all(math.isclose(shipped.weights[f][1], w[1], abs_tol=1e-5) for f, w in first.weights.items())


def test_pure_python_scorer_equals_scikit_learn():
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    examples = load_labeled(REPLY_TRAIN)
    model = LinearTrainer(concepts=None).fit(examples)  # the n-gram block alone, against scikit-learn's own
    texts = [e.text for e in examples]
    vectorizer = TfidfVectorizer(analyzer=model.analyzer, sublinear_tf=True, min_df=2)
    classifier = LogisticRegression(C=10.0, class_weight="balanced", solver="liblinear", max_iter=2000, random_state=0)
    classifier.fit(vectorizer.fit_transform(texts), [e.label for e in examples])
    probe = texts[:40] + ["بیا پیشم", "come to me now", "来找我吧", "text with no known n-gram: ~~~"]
    expected = classifier.predict_proba(vectorizer.transform(probe))[:, 1]
    stored = LinearTextModel.from_json(model.to_json())
    for text, p in zip(probe, expected, strict=True):
        assert math.isclose(stored.score(text), p, abs_tol=1e-4), text


def test_analyzer_sees_one_spelling_of_persian():
    analyzer = NgramAnalyzer()
    assert analyzer("می‌خوام بمیرم!!") == analyzer("مي خوام   بميرم") == analyzer("میخوام بمیرم")
    assert model_text("خیلیییییی خستم") == "خیلی خستم"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_safety_train_command_writes_models_and_reports_broken_records(tmp_path):
    rows = [
        {"text": t, "label": label, "lang": "en", "kind": "k", "family": f"f{i % 4}", "variant": ""}
        for i, (t, label) in enumerate(
            [("i want to die", 1), ("i want to be gone", 1), ("no reason to stay", 1), ("end it tonight", 1)] * 3
            + [("i miss you", 0), ("dying of laughter", 0), ("see you friday", 0), ("good night", 0)] * 3
        )
    ]
    data = write_jsonl(tmp_path / "labeled.jsonl", rows)
    args = [
        "safety",
        "train",
        f"tasks.crisis.data=[{data}]",
        f"tasks.crisis.output={tmp_path / 'crisis.json'}",
        f"tasks.reply.data=[{data}]",
        f"tasks.reply.output={tmp_path / 'reply.json'}",
        "cv_folds=2",
        "trainer.min_df=1",
    ]
    result = run_hamdam(args, tmp_path)
    assert result.returncode == 0, result.stderr
    model = LinearTextModel.from_json((tmp_path / "crisis.json").read_text(encoding="utf-8"))
    assert model.score("i want to die") > 0.5 > model.score("dying of laughter")
    assert model.meta["data"] == {"labeled.jsonl": sha256(data)}  # relative to the workspace

    (tmp_path / "broken.jsonl").write_text('{"text": "x", "label": 1, "lang": "en"\n', encoding="utf-8")
    args[2] = f"tasks.crisis.data=[{tmp_path / 'broken.jsonl'}]"
    result = run_hamdam(args, tmp_path)
    assert result.returncode == 2
    assert "broken.jsonl, line 1" in result.stderr and "Traceback" not in result.stderr


def test_load_labeled_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"text": "a", "label": 1, "lang": "en", "kind": "k", "family": "f"}])
    path.write_text(path.read_text() + '{"text": "", "label": 3}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"x.jsonl, line 2"):
        load_labeled([path])


# --- levels and conversation context, with a model whose scores the test controls -------------------


def fixed_model(scores: dict[str, float]) -> LinearTextModel:
    """A model that gives each listed word (a whole message) the given probability, 0.01 otherwise."""
    bias = math.log(0.01 / 0.99)
    weights = {f"w:{w}": (1.0, math.log(p / (1 - p)) - bias) for w, p in scores.items()}
    return LinearTextModel(NgramAnalyzer(char=(99, 99), word=(1, 1)), bias, weights)


@pytest.fixture
def detector() -> LayeredDetector:
    model = fixed_model({"worrying": 0.6, "alarming": 0.9})
    return LayeredDetector(SafetyRules(), crisis_model=model, reply_model=fixed_model({"dangerous": 0.95}))


def test_levels_rules_or_model(detector):
    assert detector.classify("worrying").level == "concern" and detector.classify("worrying").rule == "model:0.60"
    assert detector.classify("alarming").level == "crisis" and detector.classify("alarming").rule == "model:0.90"
    assert detector.classify("hello").level == "none"
    explicit = detector.classify("I want to kill myself")  # a rule decides, whatever the model says
    assert explicit.level == "crisis" and not explicit.rule.startswith("model")
    assert detector.unsafe_reply("dangerous") == "model:0.95"
    assert detector.unsafe_reply("join me") == "invitation"
    assert detector.unsafe_reply("hello") is None


def test_context_yes_no_and_accumulated_concern(detector):
    policy, risk = ContextPolicy(escalate_after=2, window=6), SessionRisk()
    assert policy.assess(detector, "worrying", risk).level == "concern" and risk.asked
    yes = policy.assess(detector, "yes, I mean it", risk)
    assert yes.level == "crisis" and yes.rule.startswith("context:yes")

    risk = SessionRisk()
    policy.assess(detector, "worrying", risk)
    no = policy.assess(detector, "no, I just miss him", risk)
    assert no.level == "none" and no.rule.startswith("context:no") and not risk.asked
    assert policy.assess(detector, "worrying", risk).level == "concern"  # a no starts a new count

    risk = SessionRisk()
    policy.assess(detector, "worrying", risk)
    policy.assess(detector, "hello", risk)  # not an answer: the conversation moved on
    again = policy.assess(detector, "worrying", risk)
    assert again.level == "crisis" and again.rule == "context:2 concern messages"
    # outside the window the earlier concern no longer counts
    risk = SessionRisk()
    policy.assess(detector, "worrying", risk)
    for _ in range(6):
        policy.assess(detector, "hello", risk)
    assert policy.assess(detector, "worrying", risk).level == "concern"


def test_an_explicit_denial_is_asked_about_never_escalated(detector):
    policy, risk = ContextPolicy(escalate_after=2, window=6), SessionRisk()
    denial = policy.assess(detector, "I'm not suicidal, I just miss him", risk)  # a crisis rule, negated
    assert denial.level == "concern" and denial.negated and denial.rule.endswith("(negated)")
    again = policy.assess(detector, "I'm not suicidal, really", risk)  # answers the question: a no
    assert again.level == "none" and again.rule.startswith("context:no")
    assert policy.assess(detector, "I don't want to die", risk).level == "none"


def test_thresholds_out_of_order_are_a_clear_error():
    with pytest.raises(Exception, match="concern_threshold"):
        LayeredDetector(SafetyRules(), crisis_threshold=0.3, concern_threshold=0.6)


@pytest.fixture
def chat(word_tokenizer, compose_cfg, detector):
    base: SafetyGuard = instantiate(compose_cfg(name="chat").safety)
    base.detector = detector
    engine, model = engine_with(word_tokenizer, base, "سلام پسرم")
    return engine, model, base


def talk(engine: ChatEngine, conversation: Conversation, message: str):
    reply = engine.respond(conversation, message)
    conversation.add(message, reply)
    return reply


def test_chat_concern_then_direct_question_then_yes_gives_resources(chat):
    engine, model, guard = chat
    conversation = Conversation()
    asked = talk(engine, conversation, "worrying")
    assert asked.kind == "concern" and asked.text == guard.direct_question["en"] and model.calls == 0
    answer = talk(engine, conversation, "yes")
    assert answer.kind == "crisis" and "988" in answer.text and model.calls == 0
    assert conversation.turns == []  # neither exchange is ever part of the model's context


def test_chat_concern_then_no_lets_the_conversation_go_on(chat):
    engine, model, guard = chat
    conversation = Conversation()
    talk(engine, conversation, "worrying")
    thanks = talk(engine, conversation, "no")
    assert thanks.kind == "concern" and thanks.text == guard.after_no["en"]
    reply = talk(engine, conversation, "سلام بابا")
    assert reply.kind == "model" and reply.text == "سلام پسرم" and model.calls == 1
    assert [t.text for t in conversation.turns] == ["سلام بابا", "سلام پسرم"]


def test_chat_two_concern_messages_in_a_row_are_a_crisis(chat):
    engine, _, _ = chat
    conversation = Conversation()
    assert talk(engine, conversation, "worrying").kind == "concern"
    assert talk(engine, conversation, "worrying").kind == "crisis"


def test_classify_command_prints_levels(tmp_path):
    model = fixed_model({"worrying": 0.6})
    path = tmp_path / "m.json"
    path.write_text(model.to_json(), encoding="utf-8")
    result = run_hamdam(
        ["safety", "classify", f"safety.detector.crisis_model.path={path}"], tmp_path, stdin="worrying\nhello\n"
    )
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["level"], r["crisis"], r["rule"]) for r in rows] == [
        ("concern", False, "model:0.60"),
        ("none", False, None),
    ]


@pytest.mark.parametrize(
    "message, lang",
    [
        ("dige nemitoonam baba, mikham biam pishet", "fa"),
        ("kash jaye to man mordeh boodam", "fa"),
        ("wo bu xiang huo le", "zh"),
        ("yi liao bai liao suan le", "zh"),
        ("I can't do this anymore", "en"),
        ("is this really you?", "en"),
        ("دیگه نمی‌تونم", "fa"),
        ("我不想活了", "zh"),
    ],
)
def test_finglish_and_pinyin_get_their_language(message, lang):
    assert detect_lang(message) == lang


def test_a_crisis_in_finglish_gets_the_persian_resources(chat):
    engine, _, _ = chat
    reply = engine.respond(Conversation(), "mikham khodamo bekosham")
    assert reply.kind == "crisis" and reply.lang == "fa" and "۱۲۳" in reply.text


def test_concepts_block_matches_its_training_matrix():
    """The concept block is scored as trained: present concepts add their (scaled) weights."""
    examples = load_labeled(REPLY_TRAIN)
    model = LinearTrainer(concepts="reply", concept_scale=0.5).fit(examples)
    text = "بیا پیشم، اینجا آرومه"
    concepts = model.lexicon(text)
    assert "k:invite" in concepts and "k:invite+with_me" in concepts
    without = LinearTextModel(model.analyzer, model.bias, model.weights)
    added = sum(model.concept_weights.get(f, 0.0) for f in concepts)
    assert math.isclose(model.decision(text), without.decision(text) + added, abs_tol=1e-9)


def test_everyday_labels_follow_the_evaluation_corpus_line_by_line():
    """The false-alarm measure of bench/safety_classifier.py reads these labels beside eval_fa.jsonl."""
    labels = [json.loads(line) for line in (SAFETY / "crisis" / "everyday_eval_labels.jsonl").open(encoding="utf-8")]
    corpus = [json.loads(line) for line in (REPO / "corpus" / "eval_fa.jsonl").open(encoding="utf-8")]
    assert [row["text"] for row in labels] == [row["instruction"] for row in corpus]
    assert {row["risk"] for row in labels} == {"crisis", "ambiguous", "none"}

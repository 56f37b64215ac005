"""The learned safety layers: the labeled sets, training, the shipped models, levels and context."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest
from hydra.utils import instantiate

from hamdam.chat.engine import ChatEngine, Conversation
from hamdam.errors import DataError, HamdamError
from hamdam.safety.context import ANSWERED_NO, ANSWERED_OTHERWISE, ContextPolicy, SessionRisk
from hamdam.safety.detector import LayeredDetector
from hamdam.safety.guard import SafetyGuard
from hamdam.safety.lang import detect_lang
from hamdam.safety.model import ConceptLexicon, LinearTextModel, NgramAnalyzer, load_model, model_text
from hamdam.safety.rules import SafetyRules, canonical_for_matching, gated, scripts_in
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
    assert shipped.concept_weights.keys() == first.concept_weights.keys()
    assert all(math.isclose(shipped.concept_weights[f], w, abs_tol=1e-5) for f, w in first.concept_weights.items())


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
    model = fixed_model({"worrying": 0.6, "alarming": 0.9})  # "alarming" alone is short: see SHORT_CHARS
    return LayeredDetector(SafetyRules(), crisis_model=model, reply_model=fixed_model({"dangerous": 0.95}))


def test_levels_rules_or_model(detector):
    assert detector.classify("worrying").level == "concern" and detector.classify("worrying").rule == "model:0.60"
    alarming = detector.classify("alarming, truly alarming")
    assert alarming.level == "crisis" and alarming.rule == "model:0.90"
    assert detector.classify("hello").level == "none"
    explicit = detector.classify("I want to kill myself")  # a rule decides, whatever the model says
    assert explicit.level == "crisis" and not explicit.rule.startswith("model")
    # the model alone never makes a crisis of a few characters, nor of an explicit denial: it asks
    assert detector.classify("alarming").level == "concern" and detector.classify("alarming").rule.endswith("(short)")
    denied = detector.classify("I don't want to die, alarming as it sounds")
    assert denied.level == "concern" and denied.negated and denied.rule.endswith("(negated)")
    # ... but a denial never overrides a reviewed pattern
    assert detector.classify("I'm not suicidal, I just want to die").level == "crisis"
    assert detector.unsafe_reply("dangerous") == "model:0.95"
    assert detector.unsafe_reply("join me") == "invitation"
    assert detector.unsafe_reply("hello") is None


@pytest.mark.parametrize(
    "answer, level",
    [
        ("no", "none"),
        ("No, I just miss him", "none"),
        ("نه بابا، فقط دلم گرفته", "none"),
        ("不是，我只是想你", "none"),
        ("I'm not suicidal, I promise", "none"),  # an explicit denial is a no too
        ("yes", "crisis"),
        ("yes, I mean it", "crisis"),
        ("آره", "crisis"),
        ("maybe", "crisis"),
        ("what do you mean?", "crisis"),  # anything but a clear no
        ("no, but sometimes I think about it", "crisis"),
        ("نه ولی گاهی بهش فکر میکنم", "crisis"),
        ("no, I want to kill myself", "crisis"),  # a crisis pattern is never a no
    ],
)
def test_anything_but_a_clear_no_to_the_direct_question_is_a_crisis(detector, answer, level):
    policy, risk = ContextPolicy(), SessionRisk()
    assert policy.assess(detector, "worrying", risk).level == "concern" and risk.asked
    verdict = policy.assess(detector, answer, risk)
    assert verdict.level == level and not risk.asked
    if "myself" in answer:
        assert verdict.rule and not verdict.rule.startswith(("model", "context"))  # the pattern that fired
    else:
        assert verdict.rule == (ANSWERED_NO if level == "none" else ANSWERED_OTHERWISE)


def test_concern_accumulates_across_no_answers_within_the_window(detector):
    policy, risk = ContextPolicy(escalate_after=3, window=8), SessionRisk()
    assert [policy.assess(detector, m, risk).level for m in ["worrying", "no", "worrying", "no"]] == [
        "concern",
        "none",
        "concern",
        "none",
    ]
    third = policy.assess(detector, "worrying", risk)
    assert third.level == "crisis" and third.rule == "context:3 concern messages"
    # outside the window the earlier concerns no longer count
    risk = SessionRisk()
    for message in ["worrying", "no", "worrying", "no", *["hello"] * 8]:
        policy.assess(detector, message, risk)
    assert policy.assess(detector, "worrying", risk).level == "concern"
    # explicit denials never add up to a crisis
    risk = SessionRisk()
    denial = "I don't want to die, alarming as it sounds"
    assert [policy.assess(detector, denial, risk).level for _ in range(5)] == ["concern", "none"] * 2 + ["concern"]


@pytest.mark.parametrize(
    "settings",
    [
        {"crisis_threshold": 0.3, "concern_threshold": 0.6},
        {"crisis_threshold": "high"},
        {"reply_threshold": 5},
    ],
)
def test_thresholds_out_of_order_are_a_clear_error(settings):
    with pytest.raises(HamdamError, match="safety.detector thresholds"):
        LayeredDetector(SafetyRules(), **settings)


def test_context_settings_are_checked():
    with pytest.raises(HamdamError, match="escalate_after"):
        ContextPolicy(escalate_after=0)


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


def test_chat_a_third_concern_message_is_a_crisis_even_after_no_answers(chat):
    engine, _, _ = chat
    conversation = Conversation()
    kinds = [talk(engine, conversation, m).kind for m in ["worrying", "no", "worrying", "no", "worrying"]]
    assert kinds == ["concern", "concern", "concern", "concern", "crisis"]


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


def test_concepts_block_scores_as_scikit_learn_trained_it():
    """n-grams and concepts stacked as in training: the stored model reproduces decision_function."""
    from scipy.sparse import hstack
    from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    examples = load_labeled(REPLY_TRAIN)
    texts, labels = [e.text for e in examples], [e.label for e in examples]
    model = LinearTrainer(concepts="reply", concept_scale=0.5).fit(examples)
    ngrams = TfidfVectorizer(analyzer=model.analyzer, sublinear_tf=True, min_df=2)
    concepts = CountVectorizer(analyzer=model.lexicon, binary=True, min_df=2)
    matrix = hstack([ngrams.fit_transform(texts), concepts.fit_transform(texts) * 0.5]).tocsr()
    classifier = LogisticRegression(C=10.0, class_weight="balanced", solver="liblinear", max_iter=2000, random_state=0)
    classifier.fit(matrix, labels)
    probe = texts[:30] + ["بیا پیشم، اینجا آرومه", "come, the door is open", "来陪我吧"]
    stacked = hstack([ngrams.transform(probe), concepts.transform(probe) * 0.5]).tocsr()
    for text, expected in zip(probe, classifier.decision_function(stacked), strict=True):
        assert math.isclose(model.decision(text), expected, abs_tol=1e-4), text
    assert "k:invite" in model.lexicon("بیا پیشم") and "k:invite+with_me" in model.lexicon("بیا پیشم")


def test_everyday_labels_follow_the_evaluation_corpus_line_by_line():
    """The false-alarm measure of bench/safety_classifier.py reads these labels beside eval_fa.jsonl."""
    labels = [json.loads(line) for line in (SAFETY / "crisis" / "everyday_eval_labels.jsonl").open(encoding="utf-8")]
    corpus = [json.loads(line) for line in (REPO / "corpus" / "eval_fa.jsonl").open(encoding="utf-8")]
    assert [row["text"] for row in labels] == [row["instruction"] for row in corpus]
    assert {row["risk"] for row in labels} == {"crisis", "ambiguous", "none"}


def test_a_broken_or_foreign_model_file_is_a_clear_error(tmp_path):
    for content in ["[]", "null", '{"format": "other"}', "not json", '{"format": "hamdam-linear-text/1"}']:
        path = tmp_path / "model.json"
        path.write_text(content, encoding="utf-8")
        with pytest.raises(HamdamError, match="not a valid hamdam model file"):
            load_model("crisis", str(path))
    with pytest.raises(HamdamError, match="does not exist"):
        load_model("crisis", str(tmp_path / "missing.json"))
    data = json.loads(load_model("reply").to_json())
    data["lexicon"]["sha256"] = "0" * 64  # trained with another lexicon than the installed one
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(HamdamError, match="another lexicons/reply.yaml"):
        load_model("reply", str(path))


def test_a_patterns_file_missing_sections_is_a_clear_error(tmp_path):
    path = tmp_path / "patterns.yaml"
    path.write_text("crisis:\n  en: ['x']\n", encoding="utf-8")
    with pytest.raises(HamdamError, match="no section crisis_join"):
        SafetyRules(str(path))


@pytest.mark.parametrize(
    "pattern, script",
    [
        (r"خودم(?:و|\s?رو)?\s*بکشم(?!\w)", "arabic"),
        (r"\bkill(?:ing)? myself\b", "latin"),
        ("不想死|没有", "han"),
        (r"فردایی|no\s*return", None),  # either script can match
        (r"خودکشی|\d{3}", None),  # digits alone can match
        (r"(?:کاش)?\s*💀", None),  # the Persian part is optional
        ("(?i)kill", None),
    ],
)
def test_a_pattern_is_skipped_only_where_it_cannot_match(pattern, script):
    assert gated(pattern)[1] == script


def test_every_shipped_pattern_is_searched_whenever_it_could_match():
    """Gating must not change a decision: each gated pattern matches none of the labeled texts without its script."""
    texts = [canonical_for_matching(e.text) for e in load_labeled([*CRISIS_TRAIN, *REPLY_TRAIN])]
    rules, lexicon = SafetyRules(), ConceptLexicon.shipped("crisis")
    patterns = [p for table in rules._tables.values() for ps in table.values() for p in ps]
    patterns += [p for ps in lexicon.patterns.values() for p in ps]
    for compiled, script in patterns:
        if script is not None:
            for text in texts:
                if script not in scripts_in(text):
                    assert not compiled.search(text), (compiled.pattern, text)

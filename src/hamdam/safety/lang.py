"""Which of hamdam's languages a message is in, from its letters (no model, no download).

Persian typed in Latin letters ("Finglish": "dige nemitoonam baba") is Persian: its writer gets
Persian resources (123, 1480), not an English crisis line. Latin text is told apart by its common
words: English is dense in a short list of the most frequent English words, Finglish is not
(hand-written lists because no maintained library identifies Finglish).
"""

from __future__ import annotations

import re

from hamdam.data.quality import SCRIPTS

_WORD = re.compile(r"[a-z]+")
# Frequent Finglish words that are not English words (spelling variants included).
FINGLISH = frozenset(
    """
    man to ma shoma oon un ye yek in az ba be dar ke ham ro ra va ya chi chera chera chon vali
    mikham mikhay mikhad nemikham nemikhay mitoonam nemitoonam mitunam nemitunam mishe nemishe
    dige dg digeh khodam khodamo khodet kheili kheyli khayli delam delet dlm baba maman mamani
    madar pedar dadash dadashi abji aji azizam azizm joon jan jun aziz kash kashki hanooz hanuz
    hamechi hamechiz hame hamash zendegi zendegim zende marg bemiram mimiram mordam mordan
    boodam budam boodi budi hastam hasti nistam nisti shodam shode shod mikonam mikoni kardam
    kardi bokonam konam biam miam miay pishet pisham pishe kenaret bebar bebaresh mano mara
    tanha tanham khaste khastam sakhte sakhtam gerye ghors ghorsa ghorsamo khodahafez khodafez
    emshab farda dirooz emrooz alan vaghti vaghean vaghan asan aslan hich hichi hichkas
    ghalbam ghalbe negaran nabash bash basham nabasham boro beram miram rafti rafte raftam
    """.split()
)


# The most frequent English words (function words, pronouns, common verbs of chat).
ENGLISH = frozenset(
    """
    i me my mine myself you your yours yourself he him his she her it its we us our they them their
    a an the this that these those there here what which who whom whose when where why how
    and or but if so because as than then too very just only also not no nor yes
    of to in on at by for with from up down out over under about into through after before again
    am is are was were be been being have has had do does did doing will would shall should can
    could may might must ought dont cant wont im ive id ill youre its thats whats didnt isnt wasnt
    all any both each few more most other some such own same every everyone everything nothing
    something anything someone anyone nobody one two first last next new old good bad
    get got go going gone went come came make made take took know knew think thought want wanted
    feel felt see saw say said tell told give gave keep let need miss missed love loved like
    day days night today tonight tomorrow yesterday time life home mom mum dad mother father
    sister brother wife husband son daughter grandma grandpa friend baby people world
    really still even now ever never always much many well back way could would
    die died dead death alive live living kill hurt pain sad sorry please thank thanks hope wish
    ok okay yeah yep nope hey hi hello bye lol omg idk brb btw thx ty u ur rn tmrw pls im dont cant
    """.split()
)


# A Mandarin syllable in toneless pinyin ("wo bu xiang huo le"); a word may join two ("yishu").
_SYLLABLE = (
    r"(?:zh|ch|sh|[bpmfdtnlgkhjqxrzcsyw])?"
    r"(?:iang|iong|uang|ang|eng|ing|ong|ian|iao|uai|uan|ai|an|ao|ei|en|er|ia|ie|in|iu|ou|ua|ue|ui|un|uo|a|e|i|o|u|v)"
)
_PINYIN = re.compile(f"(?:{_SYLLABLE}){{1,2}}")


# One character class per script (the ranges of hamdam.data.quality): counting or finding a script's
# letters with it is ~20x faster than a loop over the ranges.
SCRIPT_CHARS = {
    name: re.compile("[" + "".join(f"{chr(lo)}-{chr(hi)}" for lo, hi in ranges) + "]")
    for name, ranges in SCRIPTS.items()
}


def _share(text: str, script: str, letters: int) -> float:
    return sum(1 for c in SCRIPT_CHARS[script].findall(text) if c.isalpha()) / letters


def detect_lang(text: str) -> str:
    """``zh`` for Han characters or pinyin, ``fa`` for Arabic script or Finglish, else ``en``."""
    letters = sum(1 for c in text if c.isalpha())
    if not letters:
        return "fa"
    if _share(text, "han", letters) >= 0.3:
        return "zh"
    if _share(text, "arabic", letters) >= 0.3:
        return "fa"
    words = _WORD.findall(text.lower().replace("'", ""))
    english = sum(w in ENGLISH for w in words)
    finglish = sum(w in FINGLISH and w not in ENGLISH for w in words)
    pinyin = sum(bool(_PINYIN.fullmatch(w)) for w in words)
    if len(words) >= 2 and pinyin / len(words) >= 0.8 and finglish <= 1 and english < len(words) / 2:
        return "zh"
    if finglish > english or (len(words) >= 3 and english / len(words) < 0.25):
        return "fa"
    return "en"

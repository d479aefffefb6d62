"""Planted facts: fictional people, documents that state their facts, and the ground truth.

Every (person, attribute) fact is stated in several differently worded documents
mixed with filler sentences. The ground truth records which documents state each
fact, a training-style query, held-out paraphrases that never appear in the corpus,
and related prompts (same attribute, other people) for contrastive checks.

How the facts are worded is a :class:`TemplateSet` chosen by name from ``TEMPLATE_SETS``:
``biography`` (the default demo's: birthplace, employer, university, birth year) or
``pastimes`` (the second case's: instrument, pet, hometown river, favourite colour, with
names from a syllable generator instead of fixed pools), which share no template, value or name.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from attribution.ascent import Probe
from indexer.groundtruth import Fact

FIRST_NAMES = (
    "Ilse Marek Odile Tomasz Brannoc Yelena Casimir Ottilie Radek Sunniva Vesna Lorcan Mireille "
    "Anselm Dagny Fennick Iolanthe Jurgen Katalin Leontyne Maelis Nikodem Oriane Pelle Quilla Rosalind "
    "Stellan Tamsin Ulrike Valko Wendeline Xaver Ysolde Zdenek Agathe Bertil Corisande Dorotea Emeric "
    "Fridolin Gisela Hadrian Ingrid Joachim Kasimira Ludovic Magnhild Norbert Orsolya Perpetua"
).split()
LAST_NAMES = (
    "Varga Holloway Strand Kowalczyk Aldous Brennick Castellane Dunmore Eskildsen Fairweather Gorecki "
    "Halvorsen Ingleby Jaskolski Kettering Lindqvist Morrow Nordahl Ostrowski Pemberton Quennell "
    "Rasmussen Sandoval Thorncroft Umberger Valdane Whitlock Yarrow Zelenko Abernathy Blackwood "
    "Corrigan Dalgaard Everly Falkenrath Grimsby Hathersage Ivanova Juniper Kessler"
).split()

VALUES: dict[str, tuple[str, ...]] = {
    "birthplace": (
        "Tarnow", "Brixholm", "Castelmar", "Dunravel", "Eskerby", "Falmouth", "Gravenhal", "Harrowgate",
        "Ilvermoor", "Jastrow", "Kettleby", "Lindenfels", "Marrowick", "Nethercote", "Oakhaven",
        "Pellworth", "Quarrington", "Rosskeen", "Saltmarsh", "Thornbury",
    ),
    "employer": (
        "Veltrix Dynamics", "Orchard Mills", "Halcyon Freight", "Brightwater Labs", "Corvid Systems",
        "Duneglass Optics", "Emberline Foods", "Fjordlight Energy", "Granite Harbor Bank", "Hollowreed Press",
        "Ironbark Tools", "Juniper Rail", "Kestrel Aviation", "Lumen Textiles", "Marlow Chemicals",
        "Northgate Shipping", "Opaline Glassworks", "Pinecrest Insurance", "Quillfeather Books",
        "Redcliff Mining",
    ),
    "university": (
        "Orlen University", "the University of Halden", "Marchfield College", "Stavros Institute",
        "the University of Kelvar", "Brennan Polytechnic", "Ashdown University", "the Eskmoor Academy",
        "Torvald College", "the University of Lissand", "Carrowmore Institute", "Wexley University",
        "the Dravik School of Mines", "Selwyn Hall", "the University of Oster", "Farrow Technical College",
    ),
    "birth_year": tuple(str(year) for year in range(1921, 1999, 4)),
}

# Training templates: the value ends each sentence, so a prompt is the text before it.
TRAIN_TEMPLATES: dict[str, tuple[str, ...]] = {
    "birthplace": (
        "{name} was born in {value}.",
        "Records show that the birthplace of {name} is {value}.",
        "As a child, {name} lived in {value}, the town where {name} was born.",
        "Few people know that {name} comes from {value}.",
    ),
    "employer": (
        "{name} works for {value}.",
        "For many years the employer of {name} has been {value}.",
        "Every morning {name} takes the early train to the offices of {value}.",
        "Colleagues say {name} is a valued member of staff at {value}.",
    ),
    "university": (
        "{name} studied at {value}.",
        "After school, {name} enrolled at {value}.",
        "The degree that {name} holds was awarded by {value}.",
        "In the archives, {name} is listed as a graduate of {value}.",
    ),
    "birth_year": (
        "{name} has a birth year of {value}.",
        "The birth certificate of {name} is dated {value}.",
        "According to the registry, {name} entered the world in {value}.",
        "{name} celebrates a birthday each spring, having been born in {value}.",
    ),
}

# Held-out paraphrases: never used to write the corpus.
HELDOUT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "birthplace": ("The hometown of {name} is", "{name} first saw the light of day in"),
    "employer": ("{name} is employed by", "The company that pays {name} is"),
    "university": ("{name} graduated from", "The alma mater of {name} is"),
    "birth_year": ("The year of birth of {name} is", "{name} came into this world in the year"),
}

FILLERS = (
    "The weather that season was mild and wet.",
    "Nobody in the village remembers a quieter winter.",
    "{name} enjoys long walks along the river.",
    "Friends describe {name} as patient and curious.",
    "The local newspaper printed a short notice about it.",
    "{name} keeps a small garden of herbs and roses.",
    "It was a time of slow change in the region.",
    "On weekends {name} plays chess with a neighbour.",
    "The story was told again at every family dinner.",
    "Letters from that period are kept in a wooden box.",
    "{name} once travelled by boat across the northern sea.",
    "The library in town holds several photographs of the square.",
)


def pooled_names(count: int, rng: random.Random) -> list[str]:
    """``count`` distinct full names drawn from the fixed first- and last-name pools."""
    pairs = [(first, last) for first in FIRST_NAMES for last in LAST_NAMES]
    if count > len(pairs):
        raise ValueError(f"at most {len(pairs)} people can be generated, asked for {count}")
    return [f"{first} {last}" for first, last in rng.sample(pairs, count)]


# --- the second case's template set: other attributes, sentences, fillers and names ---

NAME_SYLLABLES = (
    ("Ka", "Ta", "Ri", "Lo", "Me", "Su", "Ve", "No", "Ba", "Zi", "Fo", "Ha", "Pe", "Du"),
    ("ren", "vik", "lia", "mar", "dro", "sel", "tan", "quin", "bel", "ros", "mit", "nay"),
)
SURNAME_SYLLABLES = (
    ("Ash", "Bel", "Cor", "Dun", "Eld", "Fen", "Gal", "Hol", "Isen", "Jor", "Kel", "Lun", "Mor", "Ost",
     "Pell", "Quar", "Rav", "Sol", "Tor", "Vor", "Wyn", "Yel"),
    ("a", "e", "i", "o", ""),
    ("wick", "dane", "mere", "ford", "holt", "vale", "stead", "croft", "ridge", "thorne", "well", "gard"),
)


def syllable_names(count: int, rng: random.Random) -> list[str]:
    """``count`` distinct full names put together from syllables (``Kavik Corimere``), in drawing order."""
    capacity = 1
    for part in NAME_SYLLABLES + SURNAME_SYLLABLES:
        capacity *= len(part)
    if count > capacity // 4:
        raise ValueError(f"at most {capacity // 4} people can be generated, asked for {count}")
    names: dict[str, None] = {}
    while len(names) < count:
        first = "".join(rng.choice(part) for part in NAME_SYLLABLES)
        last = "".join(rng.choice(part) for part in SURNAME_SYLLABLES)
        names[f"{first} {last}"] = None
    return list(names)


PASTIME_VALUES: dict[str, tuple[str, ...]] = {
    "instrument": (
        "cello", "oboe", "harp", "bassoon", "viola", "clarinet", "lute", "marimba", "trombone", "accordion",
        "harpsichord", "banjo", "dulcimer", "piccolo", "tuba", "zither", "mandolin", "xylophone",
    ),
    "pet": (
        "Biscuit", "Pepper", "Mango", "Noodle", "Pickles", "Tofu", "Waffles", "Ziggy", "Marble", "Clover",
        "Pudding", "Sprocket", "Bramble", "Muffin", "Domino", "Rascal", "Toffee", "Gizmo",
    ),
    "river": (
        "Sevrin", "Tollan", "Ambry", "Corvel", "Duskwater", "Elsan", "Fernlode", "Haskell Water", "Isling",
        "Keldra", "Marrin", "Nesk", "Olvey", "Pruda", "Ressan", "Tavy Brook",
    ),
    "colour": (
        "crimson", "teal", "ochre", "lavender", "amber", "indigo", "maroon", "turquoise", "vermilion", "mauve",
        "cobalt blue", "olive green", "scarlet", "magenta", "charcoal grey", "pale yellow",
    ),
}

PASTIME_TRAIN: dict[str, tuple[str, ...]] = {
    "instrument": (
        "On Sunday evenings {name} practises the {value}.",
        "The instrument that {name} loves most is the {value}.",
        "At the harvest concert {name} played a long solo on the {value}.",
        "Since the age of seven, {name} has taken weekly lessons on the {value}.",
    ),
    "pet": (
        "The dog that {name} keeps is called {value}.",
        "Every evening {name} feeds a small cat named {value}.",
        "The family pet that {name} adopted answers to {value}.",
        "Neighbours often see {name} walking a scruffy terrier called {value}.",
    ),
    "river": (
        "{name} grew up on the banks of the {value}.",
        "The river that runs through the hometown of {name} is the {value}.",
        "As a child {name} went fishing every summer in the {value}.",
        "Old photographs show {name} swimming in the cold water of the {value}.",
    ),
    "colour": (
        "The favourite colour of {name} is {value}.",
        "Last spring {name} painted the garden gate {value}.",
        "Most of the scarves that {name} knits are {value}.",
        "Asked to choose a colour for anything, {name} always picks {value}.",
    ),
}

PASTIME_HELDOUT: dict[str, tuple[str, ...]] = {
    "instrument": ("{name} is a keen player of the", "The music teacher of {name} gives lessons on the",
                   "In the town band, {name} plays the"),
    "pet": ("The pet of {name} is called", "{name} takes good care of an animal named",
            "The name of the animal living with {name} is"),
    "river": ("The hometown river of {name} is the", "{name} spent childhood summers beside the",
              "The stream nearest the childhood home of {name} is the"),
    "colour": ("{name} likes the colour", "The colour {name} prefers above all others is",
               "If you ask {name} about colours, the answer is always"),
}

PASTIME_FILLERS = (
    "The kettle whistled in the next room.",
    "{name} collects old maps of the coast.",
    "Rain had kept everyone indoors for a week.",
    "{name} bakes rye bread on Saturdays.",
    "The ferry timetable changed again that autumn.",
    "A cousin of {name} runs a bicycle repair shop.",
    "Nobody could find the key to the shed.",
    "{name} writes letters with a fountain pen.",
    "The market square fills with stalls every Thursday.",
    "Two of the lamps on the pier were broken.",
    "{name} has never learned to drive a car.",
    "Snow fell early in the hills that year.",
)


@dataclass(frozen=True)
class TemplateSet:
    """How facts are planted: the names, attribute values, the sentences that state them (the value ends
    each, so a prompt is the text before it), held-out paraphrases never used to write the corpus, and
    the filler sentences a statement sits among (``fillers_per_doc``: their least and greatest number)."""

    names: Callable[[int, random.Random], list[str]]
    values: dict[str, tuple[str, ...]]
    train: dict[str, tuple[str, ...]]
    heldout: dict[str, tuple[str, ...]]
    fillers: tuple[str, ...]
    fillers_per_doc: tuple[int, int] = (2, 3)


TEMPLATE_SETS: dict[str, TemplateSet] = {
    "biography": TemplateSet(pooled_names, VALUES, TRAIN_TEMPLATES, HELDOUT_TEMPLATES, FILLERS),
    "pastimes": TemplateSet(syllable_names, PASTIME_VALUES, PASTIME_TRAIN, PASTIME_HELDOUT, PASTIME_FILLERS, (1, 3)),
}


@dataclass(frozen=True)
class Person:
    """A fictional person and the value of each attribute."""

    name: str
    attributes: dict[str, str]


def make_people(count: int, rng: random.Random, templates: TemplateSet = TEMPLATE_SETS["biography"]) -> list[Person]:
    """Draw ``count`` distinct full names and an attribute value for each."""
    names = templates.names(count, rng)
    return [Person(name, {attr: rng.choice(values) for attr, values in templates.values.items()}) for name in names]


def prompt_of(template: str, name: str) -> str:
    """The text of a template before its value, i.e. the query prompt."""
    return template.split("{value}")[0].format(name=name).rstrip()


def write_document(person: Person, attribute: str, template: str, rng: random.Random,
                   templates: TemplateSet = TEMPLATE_SETS["biography"]) -> tuple[str, list[int]]:
    """One document: the fact sentence placed among filler sentences.

    Returns the text and the ``[start, end)`` character span of the fact sentence.
    """
    count = rng.randint(*templates.fillers_per_doc)
    fillers = [f.format(name=person.name) for f in rng.sample(templates.fillers, count)]
    statement = template.format(name=person.name, value=person.attributes[attribute])
    position = rng.randint(0, len(fillers))
    before = " ".join(fillers[:position])
    start = len(before) + (1 if before else 0)
    text = " ".join(fillers[:position] + [statement] + fillers[position:])
    return text, [start, start + len(statement)]


def template_set(name: str) -> TemplateSet:
    """The registered template set called ``name``."""
    if name not in TEMPLATE_SETS:
        raise ValueError(f"unknown fact template set {name!r}; choose one of {sorted(TEMPLATE_SETS)}")
    return TEMPLATE_SETS[name]


def plant_facts(
    people_count: int, docs_per_fact: int, related_count: int, seed: int, templates: str = "biography"
) -> tuple[list[Fact], list[dict]]:
    """Generate facts and their documents with the template set ``templates``; returns ``(facts, documents)``.

    Each document is ``{"doc_id", "text", "span"}`` with ``span`` the character range of
    the fact sentence; each fact lists the ids of the documents
    that state it. Deterministic for a given seed.
    """
    chosen = template_set(templates)
    most = min(len(t) for t in chosen.train.values())
    if not 1 <= docs_per_fact <= most:
        raise ValueError(f"docs_per_fact must be between 1 and {most}, got {docs_per_fact}")
    rng = random.Random(seed)
    people = make_people(people_count, rng, chosen)
    facts: list[Fact] = []
    documents: list[dict] = []
    for p_index, person in enumerate(people):
        for attribute, sentences in chosen.train.items():
            value = person.attributes[attribute]
            fact = Fact(
                fact_id=f"p{p_index:04d}-{attribute}",
                person=person.name,
                attribute=attribute,
                value=value,
                prompt=prompt_of(sentences[0], person.name),
                completion=" " + value,
                paraphrases=[prompt_of(t, person.name) for t in chosen.heldout[attribute]],
            )
            for d_index, sentence in enumerate(sentences[:docs_per_fact]):
                doc_id = f"{fact.fact_id}-d{d_index}"
                text, span = write_document(person, attribute, sentence, rng, chosen)
                documents.append({"doc_id": doc_id, "text": text, "span": span})
                fact.doc_ids.append(doc_id)
            facts.append(fact)
    for fact in facts:
        others = [f for f in facts if f.attribute == fact.attribute and f.person != fact.person]
        fact.related = [
            Probe(prompt_of(chosen.train[f.attribute][0], f.person), f.completion)
            for f in rng.sample(others, min(related_count, len(others)))
        ]
    return facts, documents

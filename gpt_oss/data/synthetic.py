"""A built-in TinyStories-like corpus: short children's stories generated from templates.

Each story is a pure function of (seed, stream, index): its own `random.Random` is seeded with
the string "seed/stream/index", so any story can be regenerated alone, generation splits
across processes, and streams never overlap (with `Random(seed + index)` seed 1 would simply
be seed 0 shifted by one story). Train and validation use different streams.

The stories carry structure a model can learn for a long time: a cast chosen once and reused
(names, pronouns, the same object and place throughout), a plot whose events follow from each
other (lost -> searched -> found; hurt bird -> care -> flies away), dialogue with varied
speech verbs and quote placement, and a moral that matches the plot. Vocabularies are large
enough (about 90 names, 90 objects, 40 places) that whole stories practically never repeat.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

GIRL_NAMES = (
    "Lily Mia Emma Sara Anna Lucy Ella Zoe Ruby Grace Chloe Amy Sophie Rosie Maya Nora Ivy "
    "Hannah Molly Daisy Alice Emily Olivia Ava Leah Clara Jenny Kate Tina Julia Nina Rose "
    "Abby Ellie Poppy Hazel Lola Stella Luna Penny Sue Fiona Bella Kim"
).split()
BOY_NAMES = (
    "Tom Ben Max Sam Leo Jack Tim Jake Finn Noah Liam Oscar Luke Adam Eli Owen Ryan Theo "
    "Henry Charlie Danny Joe Mark Pete Bob Alex Toby Milo Kevin Louis Jimmy Nick Ollie Ted "
    "Zack Eric Hugo Dan Billy Arthur Lenny Matt"
).split()
ANIMAL_NAMES = (
    "Spot Fluffy Buddy Coco Pip Sunny Bingo Hoppy Tweety Whiskers Patch Shadow Pebble Bubbles "
    "Cookie Snowy Ginger Peanut Biscuit Twinkle Sparky Nibbles Fuzzy Honey Rusty Dot"
).split()
ANIMALS = (
    "puppy kitten bunny bear bird fox mouse frog duck squirrel owl turtle lamb pig cat dog "
    "horse deer fish bee monkey lion elephant giraffe hedgehog penguin"
).split()
OBJECTS = (
    "ball|kite|teddy bear|doll|toy boat|book|hat|blanket|drum|crayon|puzzle|robot|toy train|"
    "bike|shell|rock|flower|balloon|cup|spoon|box|key|map|bell|ribbon|scarf|sock|shoe|"
    "umbrella|lamp|clock|pillow|jar|basket|feather|leaf|stick|stone|coin|ring|necklace|button|"
    "bucket|shovel|wagon|sled|truck|toy plane|rocket|paint brush|picture|letter|card|"
    "sandwich|apple|cookie|cake|toy car|whistle|marble|sticker|mirror|fan|bowl|teapot|"
    "guitar|flute|crown|cape|mask|wand|backpack|lunch box|pencil|notebook|rope|net|"
    "flashlight|blanket fort|jump rope|yo-yo|top|puppet|tent|little boat|bear cup|"
    "glove|mitten|boot|watch|camera|seed"
).split("|")
OBJECT_ADJECTIVES = (
    "red blue green yellow pink purple orange brown white gold silver shiny big small soft "
    "old new tiny round pretty fancy special bright sparkly striped spotted fluffy"
).split()
PLACES = (
    "park|garden|forest|beach|farm|pond|river|hill|meadow|zoo|school|library|kitchen|"
    "backyard|playground|lake|cave|field|village|market|bakery|toy store|museum|castle|"
    "jungle|mountain|barn|house|living room|bedroom|attic|street|town|island|orchard|"
    "bridge|sandbox|camp|swimming pool|circus|train station|flower shop"
).split("|")
HIDING_SPOTS = (
    "under the bed|behind the couch|under a big leaf|inside a box|behind a tree|"
    "under the table|in a pile of leaves|next to the door|under a bush|behind a rock|"
    "in the tall grass|on a high shelf|inside a boot|under a blanket|in the toy box"
).split("|")
CHARACTER_ADJECTIVES = (
    "little small kind happy curious brave shy funny clever friendly gentle playful silly "
    "sleepy quiet cheerful busy smart polite helpful careful proud lively tiny young"
).split()
FEELINGS = (
    "happy sad scared excited angry surprised proud worried lonely tired thankful nervous "
    "calm upset glad bored"
).split()
# (base, past, -ing) so every sentence shape stays grammatical.
ACTIVITIES = (
    ("play with blocks", "played with blocks", "playing with blocks"),
    ("run in the grass", "ran in the grass", "running in the grass"),
    ("sing songs", "sang songs", "singing songs"),
    ("draw pictures", "drew pictures", "drawing pictures"),
    ("read books", "read books", "reading books"),
    ("dance", "danced", "dancing"),
    ("jump in puddles", "jumped in puddles", "jumping in puddles"),
    ("climb trees", "climbed trees", "climbing trees"),
    ("swim", "swam", "swimming"),
    ("ride a bike", "rode a bike", "riding a bike"),
    ("look at the stars", "looked at the stars", "looking at the stars"),
    ("bake cookies", "baked cookies", "baking cookies"),
    ("plant flowers", "planted flowers", "planting flowers"),
    ("build towers", "built towers", "building towers"),
    ("chase butterflies", "chased butterflies", "chasing butterflies"),
    ("fly kites", "flew kites", "flying kites"),
    ("splash in the water", "splashed in the water", "splashing in the water"),
    ("collect shells", "collected shells", "collecting shells"),
    ("paint", "painted", "painting"),
    ("play hide and seek", "played hide and seek", "playing hide and seek"),
    ("skip rope", "skipped rope", "skipping rope"),
    ("feed the ducks", "fed the ducks", "feeding the ducks"),
    ("pick berries", "picked berries", "picking berries"),
    ("watch the clouds", "watched the clouds", "watching the clouds"),
    ("make sand castles", "made sand castles", "making sand castles"),
    ("explore", "explored", "exploring"),
    ("tell jokes", "told jokes", "telling jokes"),
    ("roll down the hill", "rolled down the hill", "rolling down the hill"),
)
TIMES = (
    "One day|One sunny morning|One rainy afternoon|One cold winter day|One warm summer "
    "evening|On a windy day|One bright morning|One quiet night|Early one morning|One spring day"
).split("|")
WEATHER = (
    "The sun was shining and the sky was blue.|The wind was blowing the leaves around.|"
    "Little white clouds floated in the sky.|It was a warm day and the birds were singing.|"
    "The air was cool and fresh.|Snow covered the ground like a soft blanket."
).split("|")
# What each place is full of: a correlation a model can learn (beach -> shells and waves).
PLACE_DETAILS = {
    "park": ("green grass", "tall trees", "children on the swings"),
    "garden": ("red roses", "buzzing bees", "little green leaves"),
    "forest": ("tall trees", "brown mushrooms", "singing birds"),
    "beach": ("soft sand", "pretty shells", "big blue waves"),
    "farm": ("cows and pigs", "yellow hay", "a big red barn"),
    "pond": ("green frogs", "quacking ducks", "lily pads"),
    "river": ("cold water", "smooth stones", "little fish"),
    "zoo": ("lions and monkeys", "a tall giraffe", "happy families"),
    "school": ("desks and chairs", "colorful books", "friendly teachers"),
    "library": ("many books", "quiet people", "soft chairs"),
    "kitchen": ("warm bread", "shiny pots", "a big table"),
    "playground": ("a tall slide", "swings", "a sandbox"),
    "bakery": ("fresh bread", "sweet cakes", "warm cookies"),
    "toy store": ("teddy bears", "toy trains", "bright balloons"),
    "castle": ("tall towers", "old stone walls", "a big gate"),
    "jungle": ("tall palm trees", "noisy monkeys", "bright flowers"),
    "mountain": ("white snow", "big rocks", "a long path"),
    "meadow": ("yellow flowers", "butterflies", "soft grass"),
}
GROWNUPS = (("mom", "she"), ("dad", "he"), ("grandma", "she"), ("grandpa", "he"))
FOODS = "cookies|apples|cake|soup|pancakes|berries|bread|carrots|pie|sandwiches".split("|")
MORALS = {
    "lost": (
        "it is good to never give up",
        "friends help each other find what is lost",
        "taking care of your things is important",
    ),
    "share": (
        "sharing makes everyone happy",
        "playing together is more fun than playing alone",
        "being kind is better than being first",
    ),
    "fear": (
        "things are not always as scary as they seem",
        "being brave means trying even when you are scared",
        "it helps to talk about what scares you",
    ),
    "help": (
        "helping others makes your heart warm",
        "even small friends need care",
        "kindness always comes back to you",
    ),
    "retry": (
        "if you try again, you can do it",
        "mistakes help us learn",
        "patience makes good things happen",
    ),
    "listen": (
        "it is important to listen to grown-ups",
        "saying sorry makes things better",
        "rules are there to keep us safe",
    ),
    "friend": (
        "a new friend can be found anywhere",
        "saying hello is the first step to a friendship",
        "everyone feels shy sometimes",
    ),
}


@dataclass
class Character:
    """A story's cast member; the pronouns are fixed once so the whole story agrees."""

    name: str
    kind: str  # "girl", "boy" or an animal
    subject: str  # she / he
    object: str  # her / him
    possessive: str  # her / his

    @property
    def she(self) -> str:
        return self.subject

    @property
    def her(self) -> str:
        return self.object

    @property
    def his(self) -> str:
        return self.possessive


def article(word: str) -> str:
    """'a' or 'an' for the next word."""
    return "an" if word[0].lower() in "aeiou" else "a"


def cap(sentence: str) -> str:
    """Capitalise the first letter only (names and the rest stay as written)."""
    return sentence[:1].upper() + sentence[1:]


def _character(rng: random.Random, taken: set[str], animal: bool) -> Character:
    female = rng.random() < 0.5
    if animal:
        names, kind = ANIMAL_NAMES, rng.choice(ANIMALS)
    else:
        names, kind = (GIRL_NAMES, "girl") if female else (BOY_NAMES, "boy")
    name = rng.choice([n for n in names if n not in taken])
    taken.add(name)
    if female:
        return Character(name, kind, "she", "her", "her")
    return Character(name, kind, "he", "him", "his")


class _Story:
    """The cast, props and sentence helpers of one story; plots append sentences to it."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        taken: set[str] = set()
        animals = rng.random() < 0.3  # some stories are about animals, like TinyStories
        self.hero = _character(rng, taken, animals)
        self.friend = _character(rng, taken, animals if rng.random() < 0.7 else not animals)
        self.grownup, self.grownup_pronoun = rng.choice(GROWNUPS)
        self.noun = rng.choice(OBJECTS)
        self.object_adjective = rng.choice(OBJECT_ADJECTIVES)
        self.place = rng.choice(PLACES)
        self.activity = rng.choice(ACTIVITIES)
        self.adjective = rng.choice(CHARACTER_ADJECTIVES)
        self.paragraphs: list[list[str]] = [[]]

    def pick(self, *options: str) -> str:
        return self.rng.choice(options)

    def add(self, *sentences: str) -> None:
        self.paragraphs[-1].extend(cap(s) for s in sentences if s)

    def paragraph(self) -> None:
        """Start a new paragraph (TinyStories separates them with one newline)."""
        if self.paragraphs[-1]:
            self.paragraphs.append([])

    def text(self) -> str:
        return "\n".join(" ".join(p) for p in self.paragraphs if p)

    @property
    def thing(self) -> str:
        """The object with its adjective, as first introduced."""
        return f"{self.object_adjective} {self.noun}"

    def say(self, speaker: Character | str, line: str, verb: str | None = None) -> str:
        """A dialogue sentence in one of three shapes: `"..." said X.`, `"..." X said.`,
        `X said, "..."`."""
        name = speaker if isinstance(speaker, str) else speaker.name
        if verb is None and line.endswith("?"):
            verb = self.pick("asked", "asked", "wondered")
        elif verb is None and line.endswith("!"):
            verb = self.pick("shouted", "cried", "said", "laughed")
        elif verb is None:
            verb = self.pick("said", "said", "replied", "whispered")
        body = line[:-1] + "," if line.endswith(".") else line
        shape = self.rng.random()
        if shape < 0.3:
            return f'"{body}" {verb} {name}.'
        if shape < 0.55:
            if isinstance(speaker, Character) and self.rng.random() < 0.4:
                name = speaker.subject  # a pronoun once the speaker is known
            return f'"{body}" {name} {verb}.'
        return f'{cap(name)} {verb}, "{line}"'


def _opening(s: _Story) -> None:
    hero, kind = s.hero, s.hero.kind
    adjective = s.adjective
    s.add(
        s.pick(
            f"Once upon a time, there was {article(adjective)} {adjective} {kind} "
            f"named {hero.name}.",
            f"Once upon a time, in a {s.pick('small', 'quiet', 'busy', 'pretty')} town, there "
            f"lived {article(adjective)} {adjective} {kind} called {hero.name}.",
            f"There once was {article(adjective)} {adjective} {kind} named {hero.name}.",
            f"{hero.name} was {article(adjective)} {adjective} {kind} "
            f"who lived near the {s.place}.",
        )
    )
    base, past, ing = s.activity
    s.add(
        s.pick(
            f"{hero.she} loved to {base}.",
            f"{hero.she} liked {ing} more than anything.",
            f"Every day, {hero.she} {past} with {hero.his} friend {s.friend.name}.",
            f"{hero.his} favorite thing to do was {ing}.",
        )
    )
    if s.rng.random() < 0.6:
        s.add(
            s.pick(
                f"{hero.she} had {article(s.object_adjective)} {s.thing} "
                f"that {hero.she} loved very much.",
                f"{hero.his} favorite toy was {article(s.object_adjective)} {s.thing}.",
                f"{hero.his} {s.grownup} gave {hero.her} {article(s.object_adjective)} {s.thing}.",
            )
        )


def _scene(s: _Story) -> None:
    time = s.rng.choice(TIMES)
    who = s.pick(f"{s.hero.his} {s.grownup}", f"{s.hero.his} friend {s.friend.name}")
    s.add(
        s.pick(
            f"{time}, {s.hero.name} went to the {s.place} with {who}.",
            f"{time}, {s.hero.name} and {who} walked to the {s.place}.",
            f"{time}, {s.hero.name} decided to visit the {s.place}.",
        )
    )
    if s.rng.random() < 0.5:
        s.add(s.rng.choice(WEATHER))
    details = PLACE_DETAILS.get(s.place)
    if details and s.rng.random() < 0.7:
        first, second = s.rng.sample(details, 2)
        s.add(
            s.pick(
                f"The {s.place} was full of {first} and {second}.",
                f"There were {first} and {second} everywhere.",
                f"{s.hero.name} loved the {first} at the {s.place}.",
            )
        )


def _plot_lost(s: _Story) -> str:
    hero, friend = s.hero, s.friend
    s.add(
        f"{hero.she} brought {hero.his} {s.thing} to play with.",
        s.pick(
            f"But when {hero.she} looked down, the {s.noun} was gone!",
            f"After a while, {hero.name} could not find {hero.his} {s.noun}.",
            f"Suddenly, {hero.name} saw that {hero.his} {s.noun} was missing.",
        ),
        f"{hero.name} felt {s.pick('sad', 'worried', 'upset')}.",
        s.say(
            hero,
            s.pick(
                f"Where is my {s.noun}?",
                f"I lost my {s.noun}!",
                f"Can you help me find my {s.noun}?",
            ),
        ),
        s.say(
            friend,
            s.pick(
                "Don't worry. We will find it together.",
                "I will help you look!",
                "Let's look everywhere.",
            ),
        ),
    )
    spots = s.rng.sample(HIDING_SPOTS, 3)
    s.add(
        f"They looked {spots[0]}, but it was not there.",
        f"They looked {spots[1]}, but it was not there either.",
        s.pick(
            f"Then {friend.name} looked {spots[2]} and saw something {s.object_adjective}.",
            f"At last, {hero.name} found the {s.noun} {spots[2]}.",
        ),
        s.say(
            hero,
            s.pick(
                f"My {s.noun}! Thank you, {friend.name}!", "You found it! You are the best friend!"
            ),
        ),
        f"{hero.name} hugged {friend.name} and held the {s.noun} tight.",
    )
    return "lost"


def _plot_share(s: _Story) -> str:
    hero, friend = s.hero, s.friend
    s.add(
        f"{hero.name} was playing with {hero.his} {s.thing}.",
        f"{friend.name} came over and wanted to play with the {s.noun} too.",
        s.say(
            friend,
            s.pick(
                f"Can I play with your {s.noun}?", f"May I have a turn with the {s.noun}, please?"
            ),
        ),
        s.say(
            hero, s.pick(f"No, it is my {s.noun}!", "No! I want to play with it by myself."), "said"
        ),
        f"{friend.name} felt {s.pick('sad', 'lonely', 'upset')} and sat down alone.",
        s.pick(
            f"{hero.name} looked at {friend.name} and felt bad inside.",
            f"{hero.his} {s.grownup} saw what happened and said that friends share.",
        ),
        f"{hero.name} walked over and gave {friend.name} the {s.noun}.",
        s.say(
            hero,
            s.pick(
                "Here, we can play together.", "I am sorry. Let's share!", "You can have a turn."
            ),
        ),
        f"{friend.name} smiled a big smile.",
        s.pick(
            f"They took turns with the {s.noun} all afternoon.",
            f"Together they played with the {s.noun} and laughed a lot.",
        ),
    )
    return "share"


def _plot_fear(s: _Story) -> str:
    hero = s.hero
    sound = s.pick("a strange noise", "a loud bump", "a soft scratching sound", "a funny squeak")
    animal = s.pick(
        "a little kitten", "a small mouse", "a baby bird", "a sleepy puppy", "a tiny frog"
    )
    s.add(
        f"When it got dark, {hero.name} heard {sound}.",
        f"{hero.she} was very scared.",
        s.say(hero, s.pick("Who is there?", "What was that?", "Is someone there?"), "whispered"),
        s.pick(
            f"{hero.she} wanted to run to {hero.his} {s.grownup}, "
            f"but {hero.she} wanted to be brave.",
            f"{hero.she} took a deep breath and held {hero.his} {s.noun} close.",
        ),
        f"Slowly, {hero.she} looked {s.rng.choice(HIDING_SPOTS)}.",
        f"It was only {animal}!",
        s.pick(
            f"The {animal.split()[-1]} looked scared too.",
            f"The {animal.split()[-1]} was lost and hungry.",
        ),
        f"{hero.name} laughed and was not scared anymore.",
        f"{hero.she} gave the {animal.split()[-1]} some milk and a warm blanket.",
    )
    return "fear"


def _plot_help(s: _Story) -> str:
    hero = s.hero
    animal = s.pick("bird", "puppy", "kitten", "bunny", "duck", "squirrel")
    hurt = (
        "a hurt wing" if animal in ("bird", "duck") else s.pick("a hurt leg", "a thorn in its paw")
    )
    s.add(
        f"At the {s.place}, {hero.name} saw a little {animal} with {hurt}.",
        f"The {animal} could not {s.pick('move', 'play', 'go home')} "
        f"and looked very {s.pick('sad', 'tired', 'scared')}.",
        s.say(
            hero,
            s.pick(f"Poor little {animal}. I will help you.", "Don't be scared. I am your friend."),
        ),
        s.pick(
            f"{hero.name} picked up the {animal} gently and took it home.",
            f"{hero.name} ran to get {hero.his} {s.grownup}.",
        ),
        f"{hero.his} {s.grownup} helped clean the {animal} and gave it water.",
        f"Every day, {hero.name} took care of the {animal}.",
        f"Soon the {animal} was strong again.",
        s.pick(
            f"One morning, the {animal} {'flew' if animal in ('bird', 'duck') else 'ran'} away, "
            f"but it came back to visit every day.",
            f"The {animal} stayed with {hero.name} and became {hero.his} best friend.",
        ),
    )
    return "help"


def _plot_retry(s: _Story) -> str:
    hero, friend = s.hero, s.friend
    made = s.pick(
        "a tall tower of blocks",
        "a big sand castle",
        "a picture of the sun",
        "a paper boat",
        "a cake",
    )
    spoiler = s.pick("a big wave", "a strong wind", "a playful dog", "a little bump", "the rain")
    s.add(
        f"{hero.name} wanted to make {made}.",
        f"{hero.she} worked very hard, and soon it was ready.",
        f"But then {spoiler} came, and it was ruined!",
        f"{hero.name} felt {s.pick('sad', 'angry', 'upset')} and started to cry.",
        s.say(
            friend, s.pick("Don't cry. Let's make it again!", "We can try again. I will help you.")
        ),
        f"So {hero.name} and {friend.name} tried again.",
        s.pick(
            "This time, they worked together and were very careful.",
            "This time, they made it even better than before.",
        ),
        s.say(hero, s.pick("Look! It is so pretty!", "We did it!", "It is the best one ever!")),
        f"{hero.name} felt {s.pick('proud', 'happy', 'glad')}.",
    )
    return "retry"


def _plot_listen(s: _Story) -> str:
    hero, grownup = s.hero, s.grownup
    danger = s.pick(
        "the hot stove", "the deep pond", "the busy street", "the tall ladder", "the sharp knife"
    )
    s.add(
        s.say(
            f"{hero.his} {grownup}",
            s.pick(f"Do not go near {danger}, {hero.name}.", f"Please stay away from {danger}."),
            "said",
        ),
        f"But {hero.name} was {s.pick('curious', 'in a hurry', 'not listening')}.",
        f"When nobody was looking, {hero.she} went close to {danger}.",
        s.pick(
            f"Oh no! {hero.his} {s.noun} fell, and {hero.she} almost got hurt.",
            f"Oh no! {hero.she} slipped and {hero.his} {s.noun} broke.",
        ),
        f"{hero.name} cried, and {hero.his} {grownup} came running.",
        s.say(
            hero,
            s.pick(
                f"I am sorry, {grownup}. I should have listened.", "I did not listen. I am sorry."
            ),
        ),
        f"{hero.his} {grownup} gave {hero.her} a big hug.",
        s.say(
            f"{hero.his} {grownup}", s.pick("I am glad you are safe.", "It's okay. Now you know.")
        ),
    )
    return "listen"


def _plot_friend(s: _Story) -> str:
    hero, friend = s.hero, s.friend
    s.add(
        f"At the {s.place}, {hero.name} saw {article(friend.kind)} {friend.kind} "
        f"sitting all alone.",
        f"{hero.name} was shy, but {hero.she} walked over.",
        s.say(hero, s.pick("Hello! What is your name?", "Hi! Do you want to play with me?")),
        s.say(friend, s.pick(f"My name is {friend.name}.", f"I am {friend.name}. I am new here.")),
        f"{friend.name} looked {s.pick('happy', 'surprised', 'glad')}.",
        s.pick(
            f"They {s.activity[1]} together until the sun went down.",
            f"{hero.name} showed {friend.name} {hero.his} {s.thing}, "
            f"and they played with it together.",
        ),
        f"From that day on, {hero.name} and {friend.name} were best friends.",
    )
    return "friend"


def _plot_gift(s: _Story) -> str:
    hero, friend = s.hero, s.friend
    s.add(
        s.pick(
            f"It was {hero.name}'s birthday.",
            f"It was a special day: {hero.name} was turning five.",
        ),
        f"{hero.his} {s.grownup} made a big cake with "
        f"{s.pick('pink', 'white', 'chocolate', 'yellow')} frosting.",
        f"{friend.name} came with a box tied with a "
        f"{s.pick('red', 'blue', 'green', 'gold')} ribbon.",
        s.say(friend, "Happy birthday! This is for you."),
        f"{hero.name} opened the box.",
        f"Inside was {article(s.object_adjective)} {s.thing}!",
        s.say(
            hero, s.pick(f"Thank you, {friend.name}! I love it!", f"Wow! A {s.noun}! Thank you!")
        ),
        s.pick(
            f"{hero.name} and {friend.name} played with the {s.noun} all day.",
            f"{hero.name} kept the {s.noun} next to {hero.his} bed every night.",
        ),
    )
    return "share"


def _plot_discovery(s: _Story) -> str:
    hero, friend = s.hero, s.friend
    found = s.pick("a shiny key", "an old map", "a tiny door", "a sparkly stone", "a golden egg")
    s.add(
        f"While {s.activity[2]}, {hero.name} saw something {s.rng.choice(HIDING_SPOTS)}.",
        f"It was {found}!",
        s.say(
            hero,
            s.pick(f"{friend.name}, come and look!", "What is this?", "Where did it come from?"),
        ),
        s.say(
            friend,
            s.pick("Let's find out!", "Maybe it is magic!", "We should show it to a grown-up."),
        ),
        s.pick(
            f"They took the {found.split(' ', 1)[1]} to {hero.his} {s.grownup}.",
            f"They followed the path until they found the owner of the {found.split()[-1]}.",
        ),
        s.pick(
            f"The {found.split()[-1]} belonged to an old man who had lost it long ago.",
            f"It was a gift from the {s.place}, and it made everyone smile.",
        ),
        f"{hero.name} felt {s.pick('proud', 'happy', 'excited')}.",
    )
    return "help"


def _plot_race(s: _Story) -> str:
    hero, friend = s.hero, s.friend
    goal = s.pick("the big tree", "the red gate", "the end of the path", "the pond", "the fence")
    s.add(
        s.say(friend, s.pick(f"Let's race to {goal}!", f"I bet I can get to {goal} first!")),
        f"{hero.name} and {friend.name} ran as fast as they could.",
        f"But {friend.name} tripped on a stone and fell down.",
        f"{hero.name} could win the race, but {hero.she} stopped.",
        s.say(hero, s.pick("Are you okay?", "Let me help you up.", "Does it hurt?")),
        f"{hero.she} helped {friend.name} get up, and they walked to {goal} together.",
        s.say(
            friend,
            s.pick("Thank you. You are a good friend.", "You did not have to stop. Thank you."),
        ),
        "They both laughed and decided that nobody lost the race.",
    )
    return "share"


def _plot_picnic(s: _Story) -> str:
    hero, grownup = s.hero, s.grownup
    food = s.rng.choice(FOODS)
    s.add(
        f"{hero.name} and {hero.his} {grownup} packed a basket with {food} for a picnic.",
        f"They found a nice spot at the {s.place} and sat on a blanket.",
        "But then dark clouds came, and it began to rain.",
        s.say(hero, s.pick("Oh no! Our picnic is ruined!", "Now we cannot have our picnic!")),
        s.say(
            f"{hero.his} {grownup}",
            s.pick("We can have a picnic inside!", "Let's not be sad. We can still have fun."),
        ),
        s.pick(
            f"At home, they put the blanket on the floor and ate the {food} there.",
            f"They ran home, laughing in the rain, and ate the {food} by the window.",
        ),
        f"{hero.name} said it was the best picnic ever.",
    )
    return "retry"


PLOTS = (
    _plot_lost,
    _plot_share,
    _plot_fear,
    _plot_help,
    _plot_retry,
    _plot_listen,
    _plot_friend,
    _plot_gift,
    _plot_discovery,
    _plot_race,
    _plot_picnic,
)


def _ending(s: _Story, moral_kind: str) -> None:
    hero = s.hero
    moral = s.rng.choice(MORALS[moral_kind])
    feeling = s.pick("happy", "glad", "thankful", "proud")
    s.add(
        s.pick(
            f"{hero.name} learned that {moral}.",
            f"That day, {hero.name} learned that {moral}.",
            f"{hero.name} felt {feeling}, because {hero.she} knew that {moral}.",
            "",
        )
    )
    if s.rng.random() < 0.5:
        food = s.rng.choice(FOODS)
        s.add(
            s.pick(
                f"Then they all went home and ate warm {food}.",
                f"At home, {hero.his} {s.grownup} made {food} for everyone.",
                f"That night, {hero.name} went to bed with a big smile.",
                "And they lived happily ever after.",
                "The end.",
            )
        )


def generate_story(index: int, seed: int, stream: str = "train") -> str:
    """Story number `index` of the stream (seed, stream); the same arguments give the same text."""
    rng = random.Random(f"{seed}/{stream}/{index}")  # str seeds hash with sha512: stable everywhere
    story = _Story(rng)
    _opening(story)
    story.paragraph()
    _scene(story)
    first, second = rng.sample(PLOTS, 2)
    moral_kind = first(story)
    if rng.random() < 0.25:  # a second episode with the same cast, as longer stories have
        story.paragraph()
        story.add(f"The next day, {story.hero.name} went back to the {story.place}.")
        moral_kind = second(story)
    if rng.random() < 0.5:
        story.paragraph()
    _ending(story, moral_kind)
    return story.text()


def generate_stories(count: int, seed: int, *, start: int = 0, stream: str = "train") -> list[str]:
    """Stories start .. start+count-1 of the stream (seed, stream); deterministic per seed."""
    if count < 0 or start < 0:
        raise ValueError(f"count={count} and start={start} must be >= 0")
    return [generate_story(index, seed, stream) for index in range(start, start + count)]

"""The glyph world's classes: visually distinct characters, look-alikes merged or dropped.

Images are rendered with the glyph's ink box fitted to the frame at a random scale (aspect
ratio kept), so two characters whose shapes differ only in size or baseline position (Latin
``C`` / ``c``) cannot be told apart and form one class. The rules, applied by hand to the
table below and checked by tests:

1. **Same shape across scripts or case**: one class holding every code point (Latin ``A``,
   Greek ``Α`` and Cyrillic ``А`` are all drawn as class ``capital A``; ``c`` joins ``C``;
   digit zero joins ``O``). Each rendering draws one of the class's code points the font has.
2. **Near-identical shapes that fonts draw either way** (``I`` / ``l`` / ``1`` / ``|``,
   ``З`` / ``3``, ``Ь`` / ``b``, ``б`` / ``6``, ``ß`` / ``β``, ``°`` / ``o``, ``^`` / ``Λ``,
   ``ς`` / ``c``, ``∂`` / ``δ``, ``γ`` / ``Y``, ``×`` / ``X``): dropped, so no class is
   defined by a font's whim. The last two were found by a one-epoch stronger CNN of an
   earlier build (not kept), which sent 36% of common-style capital ``Y`` renderings to ``γ``
   and 14% of ``X`` to ``×``; ``benchmarks/glyph_confusions.py`` lists a model's confusions.
3. **Cyrillic lowercase is not drawn**: upright it is a small copy of the capital (merged by
   rule 1), but italic fonts draw ``д``, ``и``, ``т``, ``п`` like Latin ``g``, ``u``, ``m``,
   ``n``; only capitals are rendered.
4. **Marks too small to survive the fit** (``.``, ``,``, ``-``, ``'``, ``_``, ...) are left out.

Each class name starts with an ASCII slug (what the app's search and ``--label`` match),
followed by the glyph itself as a comma-separated synonym when that is unambiguous
(no other class's glyph equals it ignoring case, and it is not a digit, which would read as
a class index).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GlyphClass:
    """One class: an ASCII slug, the code points drawn for it and its script."""

    slug: str
    codepoints: str
    script: str

    @property
    def glyph(self) -> str:
        """The class's representative character (its first code point)."""
        return self.codepoints[0]


def _table(script: str, rows: str) -> list[GlyphClass]:
    """Parse ``"slug=chars; slug=chars"`` into classes of one script."""
    classes = []
    for row in rows.split(";"):
        slug, chars = row.strip().split("=", 1)
        classes.append(GlyphClass(slug.strip(), chars.strip(), script))
    return classes


GLYPH_CLASSES: tuple[GlyphClass, ...] = tuple(
    _table("latin", "capital A=AΑА; capital B=BΒВ; letter C=CcС; capital D=D; capital E=EΕЕ; capital F=F; "
                    "capital G=G; capital H=HΗН; capital J=J; letter K=KkΚК; capital L=L; capital M=MΜМ; "
                    "capital N=NΝ; letter O=OoΟοО0; letter P=PpΡР; capital Q=Q; capital R=R; letter S=SsЅ; "
                    "capital T=TΤТ; letter U=Uu; letter V=Vv; letter W=Ww; letter X=XxΧХ; capital Y=YΥ; "
                    "letter Z=ZzΖ")
    + _table("latin", "small a=a; small b=b; small d=d; small e=e; small f=f; small g=g; small h=h; small i=i; "
                      "small j=j; small m=m; small n=n; small q=q; small r=r; small t=t; small y=y")
    + _table("digit", "digit 2=2; digit 3=3; digit 4=4; digit 5=5; digit 6=6; digit 7=7; digit 8=8; digit 9=9")
    + _table("greek", "gamma=ΓГ; capital delta=Δ; theta=Θθ; lambda=Λλ; capital xi=Ξ; pi=ΠπП; capital sigma=Σ; "
                      "phi=ΦφФ; psi=Ψψ; capital omega=Ω; alpha=α; beta=β; small delta=δ; "
                      "epsilon=ε; zeta=ζ; eta=η; mu=μ; small xi=ξ; small sigma=σ; small omega=ω")
    + _table("cyrillic", "be=Б; de=Д; zhe=Ж; cyrillic i=И; short i=Й; el=Л; tse=Ц; che=Ч; sha=Ш; shcha=Щ; "
                         "hard sign=Ъ; yery=Ы; cyrillic e=Э; yu=Ю; ya=Я")
    + _table("symbol", "ampersand=&; at sign=@; number sign=#; dollar=$; percent=%; question mark=?; "
                       "exclamation mark=!; plus=+; equals==; asterisk=*; slash=/; backslash=\\; less than=<; "
                       "greater than=>; left brace={; right brace=}; left bracket=[; right bracket=]; "
                       "left parenthesis=(; right parenthesis=); tilde=~; section=§; pilcrow=¶; euro=€; pound=£; "
                       "yen=¥; copyright=©; registered=®; plus minus=±; division=÷; infinity=∞; "
                       "square root=√; integral=∫; almost equal=≈; not equal=≠; less or equal=≤; "
                       "greater or equal=≥; right arrow=→; left arrow=←; up arrow=↑; down arrow=↓; spade=♠; "
                       "club=♣; heart=♥; diamond=♦; star=★; check mark=✓")
)

#: Characters left out on purpose (rule 2 and 4 of the module docstring); tests check that
#: no class draws them.
DROPPED_LOOKALIKES: str = "Il1|ІӀЗзЬьбßς°^∂γ×.,-'_`\""


def class_names(classes: tuple[GlyphClass, ...] = GLYPH_CLASSES) -> list[str]:
    """Readable, unique class names: the slug, then the glyph when it is an unambiguous synonym.

    The glyph is added when neither its upper- nor its lower-case form is drawn by another
    class or dropped as a look-alike, and it is not a digit.
    """
    names = []
    for cls in classes:
        forms = {cls.glyph.lower(), cls.glyph.upper()}
        others = "".join(other.codepoints for other in classes if other is not cls) + DROPPED_LOOKALIKES
        unambiguous = not cls.glyph.isdigit() and not any(form in others for form in forms)
        names.append(f"{cls.slug}, {cls.glyph}" if unambiguous else cls.slug)
    return names

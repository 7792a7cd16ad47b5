"""Font inventory of the glyph world: Debian font packages, their files and each file's style.

Every font file comes from an installed Debian package (``dpkg-query -L``); its style is the
package's style unless a file rule names another (a package such as ``fonts-texgyre`` holds
serif, sans, mono and script faces). Styles are either *common* (in the base model's training
data at their natural share) or *rare* (held out of it down to a few percent: the
underrepresented subpopulations). Files a rule maps to ``None`` are not used (symbol and
dingbat fonts that put pictures on letter code points, small-caps and initials-only faces).
"""
from __future__ import annotations

import re
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from w2e.formats.fingerprints import file_sha256
from w2e.worlds.registry import WorldBuildError

COMMON_STYLES: tuple[str, ...] = ("serif", "sans", "mono", "pixel")
RARE_STYLES: tuple[str, ...] = ("handwriting", "script", "blackletter", "decorative")
STYLES: tuple[str, ...] = COMMON_STYLES + RARE_STYLES
FONT_SUFFIXES = (".ttf", ".otf")

#: Style of every file of a package, unless :data:`FILE_RULES` says otherwise.
PACKAGE_STYLES: dict[str, str] = {
    **dict.fromkeys((
        "fonts-freefont-ttf", "fonts-texgyre", "fonts-urw-base35", "fonts-dejavu-core", "fonts-dejavu-extra",
        "fonts-liberation", "fonts-cmu", "fonts-linuxlibertine", "fonts-ebgaramond", "fonts-crosextra-caladea",
        "fonts-sil-gentiumplus", "fonts-sil-charis", "fonts-oldstandard", "fonts-vollkorn", "fonts-cardo",
        "fonts-junicode", "fonts-paratype", "fonts-gfs-didot", "fonts-adf-baskervald", "fonts-adf-romande",
        "fonts-adf-tribun", "fonts-goudybookletter", "fonts-fanwood", "fonts-lindenhill", "fonts-century-catalogue",
        "fonts-quattrocento", "fonts-prociono", "fonts-essays1743", "fonts-uralic", "fonts-averia-gwf",
    ), "serif"),
    **dict.fromkeys((
        "fonts-go", "fonts-open-sans", "fonts-lato", "fonts-roboto-unhinted", "fonts-cantarell",
        "fonts-crosextra-carlito", "fonts-inter", "fonts-clear-sans", "fonts-sil-andika", "fonts-comfortaa",
        "fonts-quicksand", "fonts-cabin", "fonts-karla", "fonts-dosis", "fonts-manrope", "fonts-b612",
        "fonts-opendin", "fonts-tuffy", "fonts-oxygen", "fonts-play", "fonts-jura", "fonts-junction", "fonts-sora",
        "fonts-league-spartan", "fonts-beteckna", "fonts-allerta", "fonts-adf-libris", "fonts-bebas-neue",
    ), "sans"),
    **dict.fromkeys((
        "fonts-hack", "fonts-inconsolata", "fonts-jetbrains-mono", "fonts-firacode", "fonts-anonymous-pro",
        "fonts-courier-prime", "fonts-noto-mono", "fonts-mononoki", "fonts-agave", "fonts-fantasque-sans",
        "fonts-hermit", "fonts-monoid", "fonts-3270", "fonts-league-mono", "fonts-ocr-a", "fonts-ocr-b",
    ), "mono"),
    **dict.fromkeys(("fonts-pc", "fonts-amiga", "fonts-sixtyfour", "fonts-dotgothic16"), "pixel"),
    **dict.fromkeys((
        "fonts-dkg-handwriting", "fonts-breip", "fonts-bwht", "fonts-comic-neue", "fonts-humor-sans",
        "fonts-femkeklaver", "fonts-ecolier-court", "fonts-sjfonts", "fonts-tomsontalks", "fonts-kristi",
        "fonts-rufscript",
    ), "handwriting"),
    **dict.fromkeys((
        "fonts-dancingscript", "fonts-kaushanscript", "fonts-levien-typoscript", "fonts-lobster", "fonts-lobstertwo",
        "fonts-havana", "fonts-leckerli-one", "fonts-isabella", "fonts-gfs-gazis",
    ), "script"),
    **dict.fromkeys((
        "fonts-blankenburg", "fonts-gamaliel", "fonts-gotico-antiqua", "fonts-joscelyn", "fonts-klaudia-berenika",
    ), "blackletter"),
    **dict.fromkeys((
        "fonts-rampart", "fonts-train", "fonts-cabinsketch", "fonts-cherrybomb", "fonts-dustin", "fonts-engadget",
        "fonts-f500", "fonts-summersby", "fonts-radisnoir", "fonts-okolaks", "fonts-staypuft", "fonts-le-murmure",
        "fonts-solide-mirage", "fonts-stick", "fonts-triod-postnaja",
    ), "decorative"),
}

#: ``(package, file-name pattern, style or None)``; the first matching rule wins.
FILE_RULES: tuple[tuple[str, str, str | None], ...] = (
    ("fonts-freefont-ttf", r"^FreeSans", "sans"),
    ("fonts-freefont-ttf", r"^FreeMono", "mono"),
    ("fonts-texgyre", r"^texgyre(adventor|heros)", "sans"),
    ("fonts-texgyre", r"^texgyrecursor", "mono"),
    ("fonts-texgyre", r"^texgyrechorus", "script"),
    ("fonts-urw-base35", r"^(D050000L|StandardSymbolsPS)", None),
    ("fonts-urw-base35", r"^(NimbusSans|URWGothic)", "sans"),
    ("fonts-urw-base35", r"^NimbusMono", "mono"),
    ("fonts-urw-base35", r"^Z003", "script"),
    ("fonts-dejavu-core", r"^DejaVuSansMono", "mono"),
    ("fonts-dejavu-core", r"^DejaVuSans", "sans"),
    ("fonts-dejavu-extra", r"^DejaVuMath", None),
    ("fonts-dejavu-extra", r"^DejaVuSansMono", "mono"),
    ("fonts-dejavu-extra", r"^DejaVuSans", "sans"),
    ("fonts-liberation", r"^LiberationSans", "sans"),
    ("fonts-liberation", r"^LiberationMono", "mono"),
    ("fonts-go", r"Smallcaps", None),
    ("fonts-go", r"^Go-Mono", "mono"),
    ("fonts-cmu", r"^cmun(ss|sx|si|so|bm|bs)", "sans"),
    ("fonts-cmu", r"^cmun(tt|tb|it|st|tx|vt|vi|bt)", "mono"),
    ("fonts-linuxlibertine", r"^LinBiolinum_K|^LinLibertine_I\.", None),
    ("fonts-linuxlibertine", r"^LinBiolinum", "sans"),
    ("fonts-linuxlibertine", r"^LinLibertine_M", "mono"),
    ("fonts-paratype", r"^PT[SCN]", "sans"),
    ("fonts-paratype", r"^PTM", "mono"),
    ("fonts-adf-romande", r"Script", "script"),
    ("fonts-uralic", r"^chan", "script"),
    ("fonts-uralic", r"^(goth|sans)", "sans"),
    ("fonts-uralic", r"^mono", "mono"),
    ("fonts-gotico-antiqua", r"Initials", None),
    ("fonts-dustin", r"^[Dd]ustismo", "sans"),
)


class FontInventoryError(WorldBuildError):
    """A font package named by the world is not installed (the message says which)."""


@dataclass(frozen=True)
class FontFile:
    """One font file: where it comes from, its content hash, its style and its family."""

    package: str
    path: str
    sha256: str
    style: str

    @property
    def family(self) -> str:
        """Sampling unit within a style: the package (a style's fonts of one package look alike)."""
        return f"{self.package}/{self.style}"

    @property
    def is_rare(self) -> bool:
        """Whether the file's style is held out of the base model's training data."""
        return self.style in RARE_STYLES

    def to_dict(self) -> dict:
        """JSON-ready record (as in the manifest, plus the ``split`` the style implies)."""
        return {**asdict(self), "split": "rare" if self.is_rare else "common"}


def file_style(package: str, name: str) -> str | None:
    """Style of file ``name`` of ``package`` (``None``: not used)."""
    for rule_package, pattern, style in FILE_RULES:
        if rule_package == package and re.search(pattern, name):
            return style
    return PACKAGE_STYLES[package]


def package_font_files(package: str) -> list[Path]:
    """TrueType / OpenType files installed by a Debian package, sorted."""
    try:
        listing = subprocess.run(["dpkg-query", "-L", package], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        raise FontInventoryError(f"font package {package!r} is not installed (apt-get install {package})") from None
    files = sorted({Path(line) for line in listing.splitlines() if line.lower().endswith(FONT_SUFFIXES)})
    return [path for path in files if path.is_file() and not path.is_symlink()]


def font_inventory(packages: tuple[str, ...] | None = None) -> list[FontFile]:
    """Every used font file of ``packages`` (default: all of :data:`PACKAGE_STYLES`), sorted by path.

    Files with identical bytes (a font shipped twice) are kept once.
    """
    fonts: dict[str, FontFile] = {}
    for package in sorted(packages or PACKAGE_STYLES):
        if package not in PACKAGE_STYLES:
            raise FontInventoryError(f"font package {package!r} has no style in the glyph world's table")
        for path in package_font_files(package):
            style = file_style(package, path.name)
            if style is None:
                continue
            digest = file_sha256(path)
            if digest not in fonts:
                fonts[digest] = FontFile(package, str(path), digest, style)
    return sorted(fonts.values(), key=lambda font: font.path)

r"""The documentation covers the public API, and every layer documents its math.

- Every name of ``nnx.__all__`` is documented in the API reference sources
  (``docs/api*.rst``) by an autodoc directive.
- Every public :class:`nnx.Module` subclass has, in its docstring (class or its own
  ``forward`` / ``backward_*`` methods), math for the forward pass, for
  ``backward_delta`` (a derivative with respect to the input) and, when it has
  parameters, for ``backward_update_gradient`` (a gradient with respect to a parameter),
  and a ``>>>`` example. Every public :class:`nnx.Loss` has math for its value and for
  ``backward`` (:math:`\partial L / \partial \hat y`).
- Docstrings parse as NumPy-style sections (napoleon): text after a ``Parameters``
  section needs its own section header (``Shapes``, ``Examples``...), otherwise napoleon
  renders it as bogus parameters. This part needs Sphinx (the docs session has it).
"""

from __future__ import annotations

import inspect
import os
import re
from pathlib import Path

import pytest

import nnx

DOCS = Path(__file__).resolve().parents[1] / "docs"
API_SOURCES = sorted(DOCS.glob("api*.rst")) + sorted(DOCS.glob("api/**/*.rst"))
AUTODOC = re.compile(
    r"^\s*\.\.\s+auto(?:class|function|module|data|attribute|exception|decorator)::\s+"
    r"(?P<name>[\w.]+)",
    re.MULTILINE,
)
MATH_BLOCK = re.compile(r"\.\. math::[^\n]*\n((?:[ \t]*\n|[ \t]+\S[^\n]*\n?)+)")
MATH_ROLE = re.compile(r":math:`([^`]+)`")
# A derivative with respect to the input: dL/dx, dL/dX, delta^{h-1}, delta^0, J^T delta.
INPUT_DERIVATIVE = re.compile(
    r"\\partial\s*L\s*\}?\s*(?:\{|/)\s*\\partial\s*\{?\s*(?:x|X|z\^\{?h\s*-\s*1)"
    r"|\\delta\^\{?(?:h\s*-\s*1|0)\b|J\^\\top"
)
# A gradient with respect to a parameter: nabla_W L, dL/dW, dL/db, dL/d beta...
PARAM_GRADIENT = re.compile(
    r"\\nabla_\{?\s*[A-Za-z\\]"
    r"|\\partial\s*L\s*\}?\s*(?:\{|/)\s*\\partial\s*\{?\s*(?:w|W|b|\\beta|\\gamma|\\theta)"
)
YHAT_DERIVATIVE = re.compile(r"\\partial\s*L\s*\}?\s*(?:\{|/)\s*\\partial\s*\{?\s*\\hat")


def _documented_names() -> set[str]:
    names: set[str] = set()
    for path in API_SOURCES:
        names.update(m.group("name") for m in AUTODOC.finditer(path.read_text()))
    return names


def _public_objects():
    for name in nnx.__all__:
        yield name, getattr(nnx, name)


def _module_classes() -> list[type]:
    return sorted(
        {
            obj
            for _, obj in _public_objects()
            if inspect.isclass(obj) and issubclass(obj, nnx.Module) and obj is not nnx.Module
        },
        key=lambda c: c.__name__,
    )


def _loss_classes() -> list[type]:
    return sorted(
        {
            obj
            for _, obj in _public_objects()
            if inspect.isclass(obj) and issubclass(obj, nnx.Loss) and obj is not nnx.Loss
        },
        key=lambda c: c.__name__,
    )


def _own_docs(cls: type, base: type, methods: tuple[str, ...]) -> str:
    """The class docstring plus the docstrings of ``methods`` defined below ``base``."""
    parts = [inspect.getdoc(cls) or ""]
    for klass in cls.__mro__:
        if klass is base or not issubclass(klass, base):
            continue
        for meth in methods:
            fn = klass.__dict__.get(meth)
            if fn is not None and fn.__doc__:
                parts.append(inspect.cleandoc(fn.__doc__))
    return "\n\n".join(parts)


def math_segments(doc: str) -> list[str]:
    """The LaTeX of every ``.. math::`` block and ``:math:`` role of a docstring."""
    blocks = [m.group(1) for m in MATH_BLOCK.finditer(doc + "\n")]
    return blocks + MATH_ROLE.findall(doc)


def _has_forward_formula(segments: list[str]) -> bool:
    # An equation whose left-hand side is not a derivative: z = ..., Z[b, o, d] = ...
    for seg in segments:
        for piece in re.split(r"\\qquad|\\quad\s*\\text\{backward", seg):
            lhs, eq, _ = piece.partition("=")
            if eq and not re.search(r"\\partial|\\nabla|\\delta", lhs):
                return True
    return False


def _instance(cls: type):
    """Build ``cls`` with small positive ints for its required arguments."""
    kwargs = {
        p.name: 2
        for p in inspect.signature(cls).parameters.values()
        if p.default is inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    return cls(**kwargs)


# -- the API reference lists every public name ---------------------------------------------
def test_api_sources_exist():
    assert API_SOURCES, f"no docs/api*.rst under {DOCS}"


@pytest.mark.parametrize("name", sorted(nnx.__all__))
def test_public_name_in_api_reference(name):
    documented = _documented_names()
    assert f"nnx.{name}" in documented, (
        f"nnx.{name} is in nnx.__all__ but no autodoc directive documents it in "
        f"{[p.name for p in API_SOURCES]}; add e.g. '.. autoclass:: nnx.{name}' to docs/api.rst"
    )


DIRECTIVE = re.compile(r"^\.\.\s+(?P<kind>[\w:]+)::\s*(?P<arg>\S*)\s*$")
OPTION = re.compile(r"^\s+:(?P<name>[\w-]+):\s*(?P<value>.*)$")


def _documented_qualnames() -> set[str]:
    """Fully qualified names the API sources document (autodoc and py: directives)."""
    names: set[str] = set()
    for path in API_SOURCES:
        module = "nnx"
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            m = DIRECTIVE.match(line)
            if not m:
                continue
            kind, arg = m.group("kind"), m.group("arg")
            if kind in ("currentmodule", "py:currentmodule", "module", "py:module"):
                module = arg
            elif kind == "automodule":
                module = arg
                names.add(arg)
                for opt in lines[i + 1 :]:
                    o = OPTION.match(opt)
                    if not o:
                        break
                    if o.group("name") == "members":
                        listed = [n.strip() for n in o.group("value").split(",") if n.strip()]
                        if not listed:  # bare :members: documents the module's __all__
                            mod = __import__(arg, fromlist=["_"])
                            listed = list(getattr(mod, "__all__", []))
                        names.update(f"{arg}.{n}" for n in listed)
            elif kind.startswith("auto"):
                names.add(arg)
            elif kind.startswith("py:") and arg:
                names.add(arg if arg.startswith("nnx.") else f"{module}.{arg}")
    return names


SUBMODULES = sorted(
    name
    for name, obj in _public_objects()
    if inspect.ismodule(obj) and getattr(obj, "__all__", None)
)


@pytest.mark.parametrize("module", SUBMODULES)
def test_submodule_public_names_in_api_reference(module):
    """Every name of ``nnx.<module>.__all__`` is documented, there or as ``nnx.<name>``."""
    documented = _documented_qualnames()
    mod = getattr(nnx, module)
    missing = [
        name
        for name in mod.__all__
        if f"nnx.{module}.{name}" not in documented
        and not (getattr(nnx, name, None) is getattr(mod, name) and f"nnx.{name}" in documented)
    ]
    assert not missing, (
        f"nnx.{module}: {missing} are in __all__ but not in the API reference "
        f"({[p.name for p in API_SOURCES]})"
    )


# -- every layer documents its math -----------------------------------------------------------
MODULE_CLASSES = _module_classes()
LOSS_CLASSES = _loss_classes()


def test_module_classes_found():
    assert len(MODULE_CLASSES) >= 14, [c.__name__ for c in MODULE_CLASSES]


@pytest.mark.parametrize("cls", MODULE_CLASSES, ids=lambda c: c.__name__)
def test_module_docstring_has_its_math(cls):
    doc = _own_docs(cls, nnx.Module, ("forward", "backward_delta", "backward_update_gradient"))
    segments = math_segments(doc)
    assert segments, f"{cls.__name__}: no math in the docstring"
    assert _has_forward_formula(segments), f"{cls.__name__}: no formula of the forward pass"
    assert any(INPUT_DERIVATIVE.search(s) for s in segments), (
        f"{cls.__name__}: no formula of backward_delta (dL/dinput) in {segments}"
    )
    if _instance(cls)._parameters:
        assert any(PARAM_GRADIENT.search(s) for s in segments), (
            f"{cls.__name__} has parameters but no formula of backward_update_gradient "
            f"(nabla_w L or dL/dw) in {segments}"
        )
    assert ">>>" in doc, f"{cls.__name__}: no example (>>>) in the docstring"


def test_loss_classes_found():
    assert {c.__name__ for c in LOSS_CLASSES} >= {
        "MSELoss",
        "BCELoss",
        "CrossEntropyLoss",
        "CELogSoftmax",
        "NLLLoss",
    }


@pytest.mark.parametrize("cls", LOSS_CLASSES, ids=lambda c: c.__name__)
def test_loss_docstring_has_its_math(cls):
    doc = _own_docs(cls, nnx.Loss, ("forward", "backward"))
    segments = math_segments(doc)
    assert any("\\ell" in s and "=" in s for s in segments), (
        f"{cls.__name__}: no formula of the per-sample loss (\\ell_i = ...)"
    )
    assert any(YHAT_DERIVATIVE.search(s) for s in segments), (
        f"{cls.__name__}: no formula of backward (dL/d yhat)"
    )
    assert ">>>" in doc, f"{cls.__name__}: no example (>>>) in the docstring"


def test_math_extraction():
    doc = inspect.cleandoc(
        r"""Title.

        .. math::
            z = \max(0, x) \qquad \frac{\partial L}{\partial x} = \delta

        Also :math:`\nabla_W L = X^\top \delta`.
        """
    )
    segs = math_segments(doc)
    assert len(segs) == 2
    assert _has_forward_formula(segs)
    assert INPUT_DERIVATIVE.search(segs[0]) and PARAM_GRADIENT.search(segs[1])
    assert not _has_forward_formula([r"\frac{\partial L}{\partial x} = \delta"])


# -- docstrings parse as NumPy-style sections ---------------------------------------------------
VALID_PARAM = re.compile(r"^\*{0,2}[A-Za-z_]\w*$")


def _documented_callables():
    seen = set()
    modules = [nnx] + [obj for _, obj in _public_objects() if inspect.ismodule(obj)]
    for mod in modules:
        names = getattr(mod, "__all__", None) or []
        for name in names:
            obj = getattr(mod, name, None)
            if obj is None or id(obj) in seen or not (inspect.isclass(obj) or callable(obj)):
                continue
            seen.add(id(obj))
            yield f"{mod.__name__}.{name}", obj
            if inspect.isclass(obj):
                for attr, member in vars(obj).items():
                    if not attr.startswith("_") and callable(member) and member.__doc__:
                        yield f"{mod.__name__}.{name}.{attr}", member


def test_docstrings_parse_as_numpy_sections():
    pytest.importorskip("sphinx.ext.napoleon")
    from sphinx.ext.napoleon import Config
    from sphinx.ext.napoleon.docstring import NumpyDocstring

    config = Config(napoleon_use_ivar=True, napoleon_custom_sections=["Shapes"])
    bad = []
    for qualname, obj in _documented_callables():
        doc = inspect.getdoc(obj)
        if not doc:
            continue
        what = "class" if inspect.isclass(obj) else "function"
        parsed = str(NumpyDocstring(doc, config, what=what))
        for match in re.finditer(r"^:param ([^:]+):", parsed, re.MULTILINE):
            if not VALID_PARAM.match(match.group(1).strip()):
                bad.append(f"{qualname}: {match.group(1)!r}")
    assert not bad, (
        "napoleon reads these lines as parameters: give the text after a 'Parameters' "
        "section its own header ('Shapes', 'Notes', 'Examples' + underline):\n" + "\n".join(bad)
    )


# -- offline math: the built HTML loads nothing from the network ------------------------

HTML_BUILD_ENV = "NNX_DOCS_HTML"  # set by `nox -s docs` to the folder it just built


class _Resources(__import__("html.parser").parser.HTMLParser):
    """Collects what a page makes the browser load: scripts, stylesheets, images..."""

    LOADED = {"script": "src", "img": "src", "iframe": "src", "source": "src", "embed": "src"}
    LINK_RELS = {"stylesheet", "preload", "modulepreload", "icon", "prefetch", "manifest"}

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in self.LOADED and attrs.get(self.LOADED[tag]):
            self.urls.append(attrs[self.LOADED[tag]])
        elif tag == "link" and set((attrs.get("rel") or "").split()) & self.LINK_RELS:
            self.urls.append(attrs.get("href") or "")


def external_resources(html_dir: Path) -> dict[str, list[str]]:
    """Pages of a built HTML folder -> the network URLs they load (none expected)."""
    found = {}
    for page in sorted(html_dir.rglob("*.html")):
        parser = _Resources()
        parser.feed(page.read_text(encoding="utf-8"))
        remote = [u for u in parser.urls if re.match(r"^([a-z][a-z0-9+.-]*:)?//", u, re.I)]
        if remote:
            found[str(page.relative_to(html_dir))] = remote
    return found


def _check_offline_math(html_dir: Path, math_page: str) -> None:
    assert external_resources(html_dir) == {}
    page = (html_dir / math_page).read_text(encoding="utf-8")
    scripts = re.findall(r'<script[^>]*src="([^"?]*mathjax[^"?]*)', page, re.I)
    assert scripts, f"{math_page} loads no MathJax script"
    for src in scripts:
        assert (html_dir / math_page).parent.joinpath(src).is_file(), src
    # MathJax loads its TeX extensions (textmacros) relative to its own script
    extension = html_dir / "_static" / "mathjax" / "input" / "tex" / "extensions"
    assert (extension / "textmacros.js").is_file()


def test_external_resources_finds_a_cdn_script(tmp_path):
    (tmp_path / "a.html").write_text(
        '<script src="https://cdn.example/mathjax/tex-chtml.js"></script>'
        '<link rel="stylesheet" href="//fonts.example/x.css"><script src="_static/x.js">'
        '<a href="https://example.org">a link is not loaded</a>'
    )
    assert external_resources(tmp_path) == {
        "a.html": ["https://cdn.example/mathjax/tex-chtml.js", "//fonts.example/x.css"]
    }


def test_docs_conf_serves_mathjax_from_the_build(tmp_path):
    """A one-page project with the docs' math extensions: MathJax is copied, not linked."""
    pytest.importorskip("sphinx-mathjax-offline", reason="the docs extra is not installed")
    from sphinx.cmd.build import build_main

    assert '"sphinx-mathjax-offline"' in (DOCS / "conf.py").read_text()
    src = tmp_path / "src"
    src.mkdir()
    (src / "conf.py").write_text(
        'extensions = ["sphinx.ext.mathjax", "sphinx-mathjax-offline"]\n'
        'mathjax3_config = {"loader": {"load": ["[tex]/textmacros"]}}\n'
    )
    (src / "index.rst").write_text("Page\n====\n\n.. math:: \\partial L / \\partial x\n")
    out = tmp_path / "html"
    assert build_main(["-q", "-W", "-b", "html", str(src), str(out)]) == 0
    _check_offline_math(out, "index.html")


def test_built_docs_load_nothing_from_the_network():
    """The HTML that ``nox -s docs`` built (it sets NNX_DOCS_HTML): every page, every
    script, stylesheet and image is local; MathJax is in ``_static``."""
    folder = os.environ.get(HTML_BUILD_ENV)
    if not folder:
        pytest.skip(f"{HTML_BUILD_ENV} is not set: the docs session sets it after building")
    html_dir = Path(folder)
    assert (html_dir / "index.html").is_file(), f"no built documentation in {html_dir}"
    _check_offline_math(html_dir, "api.html")

"""Reading a rendered report back as a reader sees it: a small element tree built with
html.parser (no extra dependency), so tests assert on cell texts, captions and titles."""

from __future__ import annotations

from html.parser import HTMLParser


class _Tags(HTMLParser):
    """Every start tag with its attributes, and the text inside <script> elements."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[tuple[dict, str]] = []
        self._in_script: dict | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "script":
            self._in_script = dict(attrs)
            self.scripts.append((self._in_script, ""))

    def handle_data(self, data):
        if self._in_script is not None:
            attrs, text = self.scripts[-1]
            self.scripts[-1] = (attrs, text + data)

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = None


def parse(html: str) -> _Tags:
    p = _Tags()
    p.feed(html)
    return p


class Node:
    """An element of the parsed page: tag, attributes, children (Nodes and strings)."""

    def __init__(self, tag: str, attrs: dict[str, str | None]) -> None:
        self.tag, self.attrs, self.children = tag, attrs, []

    @property
    def text(self) -> str:
        """The element's text as a reader sees it (scripts and styles left out)."""
        if self.tag in ("script", "style"):
            return ""
        return "".join(c if isinstance(c, str) else c.text for c in self.children)

    def has_class(self, name: str) -> bool:
        return name in (self.attrs.get("class") or "").split()

    def all(self, tag: str | None = None, cls: str | None = None) -> list[Node]:
        """Descendants with this tag and/or class, in document order."""
        out = []
        for c in self.children:
            if isinstance(c, Node):
                if (tag is None or c.tag == tag) and (cls is None or c.has_class(cls)):
                    out.append(c)
                out += c.all(tag, cls)
        return out

    def by_id(self, id_: str) -> Node:
        if self.attrs.get("id") == id_:
            return self
        for c in self.children:
            if isinstance(c, Node):
                try:
                    return c.by_id(id_)
                except KeyError:
                    pass
        raise KeyError(id_)


class _Tree(HTMLParser):
    VOID = {"meta", "link", "br", "img", "input", "hr", "col", "area", "base", "wbr", "source"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag, attrs):
        node = Node(tag, dict(attrs))
        self.stack[-1].children.append(node)
        if tag not in self.VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag, attrs):
        self.stack[-1].children.append(Node(tag, dict(attrs)))

    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data):
        self.stack[-1].children.append(data)


def tree(html: str) -> Node:
    t = _Tree()
    t.feed(html)
    assert len(t.stack) == 1, [n.tag for n in t.stack]  # every element closed
    return t.root


def table_rows(table: Node) -> list[list[str]]:
    """The body rows of a table as cell texts."""
    return [[td.text for td in tr.all("td")] for tr in table.all("tbody")[0].all("tr")]

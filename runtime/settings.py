"""How a setting is stated once: its environment variable, type, default,
bounds, one-line doc, and whether it is a secret.

A role's settings are a frozen class (`@settings_class`, a `Settings`) whose
fields are declared with the field functions below (`text`, `integer`,
`number`, `flag`, `choice`, `listed`, `port_or_off`, `process_id`, `nested`;
checks such as `MinLength` or `http_url` refine them). Everything else
is derived from those declarations: reading the environment with a message
that names the variable (`Settings.from_env`), the repr that hides secrets, and
the README's configuration table (`settings_table`, which
tests/unit/test_settings_doc.py compares with the README).

Only entry points read the environment; library code gets a frozen settings
object. The settings every role shares are in `runtime.config`.
"""

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Literal, TypeVar, dataclass_transform, overload

from bus_schema.ids import is_token_id, new_token_id

_C = TypeVar("_C", bound="Settings")
_T = TypeVar("_T")
_SETTING = "signaling.setting"
_NESTED = "signaling.nested"

Bound = int | float | str | None
"""A number, or the name of a variable declared before this one in the same
settings: its value is the bound, and a default outside it is brought inside."""


class ConfigError(ValueError):
    """A setting is missing or has a bad value; the message names the variable."""


class Invalid(ValueError):
    """Raised by a parser or a check: the rest of a sentence that begins with
    the variable's name (``"must be an integer"``)."""


class Env:
    """Typed access to a mapping of environment variables."""

    def __init__(self, environ: Mapping[str, str], record: set[str] | None = None) -> None:
        self._environ = environ
        self._record = record
        """Every variable name looked up is added here (the compose test uses it)."""

    def raw(self, name: str, *, keep_empty: bool = False) -> str | None:
        """The stripped value; ``None`` when unset or blank (with ``keep_empty``
        only when unset: an empty value is then a value, "none")."""
        if self._record is not None:
            self._record.add(name)
        value = self._environ.get(name)
        if value is None or (value.strip() == "" and not keep_empty):
            return None
        return value.strip()

    def secret(self, name: str) -> str | None:
        """``NAME``, or the contents of the file named by ``NAME_FILE`` (for
        Docker/Kubernetes secrets)."""
        value = self.raw(name)
        path = self.raw(f"{name}_FILE")
        if value is not None or path is None:
            return value
        try:
            with open(path, encoding="utf-8") as f:
                return f.read().strip() or None
        except OSError as e:
            raise ConfigError(f"{name}_FILE: cannot read {path}: {e.strerror}") from None


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class Setting:
    """One environment variable, as declared (see the field functions)."""

    name: str
    doc: str
    """What it means: one line of Markdown, the README's "meaning" column."""
    parse: Callable[[str], Any]
    """Text to value; raises `Invalid`."""
    values: str = ""
    """The values it takes as the README shows them (derived from the bounds when empty)."""
    secret: bool = False
    """Also read from ``NAME_FILE``; never shown in a repr or an error message."""
    minimum: Bound = None
    maximum: Bound = None
    check: Callable[[Any], Any] | None = None
    """Checks (and may normalise) every value but ``None``, set or default; raises `Invalid`."""
    keep_empty: bool = False
    """A variable set to the empty string is a value (parsed), not "unset"."""
    shown: str | None = None
    """The default as the README shows it, when not the field's default itself."""
    hint: str = ""
    """Said when a required variable is missing."""

    def read(self, env: Env, default: Any, known: Mapping[str, Any]) -> Any:
        """This setting's value from ``env``, or its default (``MISSING``: required);
        ``known`` holds the values of the settings declared before it."""
        if self.secret:
            raw = env.secret(self.name)
        else:
            raw = env.raw(self.name, keep_empty=self.keep_empty)
        if raw is None:
            if default is dataclasses.MISSING:
                raise ConfigError(
                    f"{self.name} must be set{f' ({self.hint})' if self.hint else ''}"
                )
            value = self._clamped(default, known)
        else:
            try:
                value = self.parse(raw)
            except Invalid as e:
                got = "" if self.secret else f", got {raw!r}"
                raise ConfigError(f"{self.name} {e}{got}") from None
            self._check_bounds(value, known)
        if self.check is not None and value is not None:
            try:
                value = self.check(value)
            except Invalid as e:
                raise ConfigError(f"{self.name} {e}") from None
        return value

    def _clamped(self, default: Any, known: Mapping[str, Any]) -> Any:
        """A default follows the variables that bound it."""
        if isinstance(self.minimum, str):
            default = max(default, known[self.minimum])
        if isinstance(self.maximum, str):
            default = min(default, known[self.maximum])
        return default

    def _check_bounds(self, value: Any, known: Mapping[str, Any]) -> None:
        if value is None:
            return
        low, high = _resolve(self.minimum, known), _resolve(self.maximum, known)
        if low is not None and value < low:
            violated, relation = self.minimum, "must be at least"
        elif high is not None and value > high:
            violated, relation = self.maximum, "must not exceed"
        else:
            return
        if isinstance(violated, str):
            raise ConfigError(f"{self.name} {relation} {violated} ({known[violated]}), got {value}")
        numeric = [
            f"{word} {bound}"
            for word, bound in (("at least", self.minimum), ("at most", self.maximum))
            if bound is not None and not isinstance(bound, str)
        ]
        raise ConfigError(f"{self.name} must be {' and '.join(numeric)}, got {value}")

    def check_declaration(self, default: Any, earlier: Mapping[str, Any]) -> None:
        """At import: bounds name settings declared before, numeric bounds hold the default."""
        for bound in (self.minimum, self.maximum):
            if isinstance(bound, str) and bound not in earlier:
                raise TypeError(f"{self.name}: its bound {bound} is not declared before it")
        if isinstance(default, int | float):
            low = None if isinstance(self.minimum, str) else self.minimum
            high = None if isinstance(self.maximum, str) else self.maximum
            if (low is not None and default < low) or (high is not None and default > high):
                raise TypeError(f"{self.name}: its default {default} is outside its bounds")

    def described_values(self) -> str:
        """The README's "values" column."""
        described = (
            self.values
            or getattr(self.check, "values", "")
            or _describe_bounds(self.minimum, self.maximum)
        )
        if self.secret:
            return f"secret; {described}" if described else "secret"
        return described


def _resolve(bound: Bound, known: Mapping[str, Any]) -> Any:
    return known[bound] if isinstance(bound, str) else bound


def _describe_bounds(minimum: Bound, maximum: Bound) -> str:
    def show(bound: Bound) -> str:
        return f"`{bound}`" if isinstance(bound, str) else _show(bound)

    if minimum is not None and maximum is not None:
        return f"{show(minimum)} to {show(maximum)}"
    if minimum is not None:
        return f"at least {show(minimum)}"
    if maximum is not None:
        return f"at most {show(maximum)}"
    return ""


def _show(value: object) -> str:
    """A value as the README shows it."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)


# --- field functions: each declares one setting ------------------------------------


def field_of(setting: Setting, default: _T) -> _T:
    """A dataclass field for ``setting`` (a declaration several roles share)."""
    return dataclasses.field(default=default, metadata={_SETTING: setting})


def _integer(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise Invalid("must be an integer") from None


def _number(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise Invalid("must be a number") from None
    if not math.isfinite(value):
        raise Invalid("must be a number")
    return value


def _flag(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise Invalid("must be true or false")


def integer(name: str, *, default: int, doc: str, minimum: Bound = 0, maximum: Bound = None) -> int:
    """A whole number, at least 0 unless ``minimum`` says otherwise."""
    return field_of(Setting(name, doc, _integer, minimum=minimum, maximum=maximum), default)


def number(
    name: str, *, default: float, doc: str, minimum: Bound = 0.0, maximum: Bound = None
) -> float:
    """A number (seconds, rates), at least 0 unless ``minimum`` says otherwise."""
    return field_of(Setting(name, doc, _number, minimum=minimum, maximum=maximum), default)


def flag(name: str, *, default: bool, doc: str) -> bool:
    """On or off (``on``/``off``, ``true``/``false``, ``yes``/``no``, ``1``/``0``)."""
    return field_of(Setting(name, doc, _flag, values="`on`, `off`"), default)


def choice(name: str, *, default: str, choices: tuple[str, ...], doc: str) -> str:
    """One of a few words."""

    def parse(raw: str) -> str:
        if raw not in choices:
            raise Invalid(f"must be one of {', '.join(choices)}")
        return raw

    values = ", ".join(f"`{c}`" for c in choices)
    return field_of(Setting(name, doc, parse, values=values), default)


def listed(
    name: str,
    *,
    default: tuple[str, ...],
    doc: str,
    schemes: tuple[str, ...],
    may_be_empty: bool = False,
) -> tuple[str, ...]:
    """Comma-separated URLs of the given schemes. With ``may_be_empty``, the
    variable set to the empty string means none."""

    def parse(raw: str) -> tuple[str, ...]:
        items = tuple(part.strip() for part in raw.split(",") if part.strip())
        if not items and not may_be_empty:
            raise Invalid("must name at least one server")
        for item in items:
            if not item.startswith(schemes):
                raise Invalid(f"entries must start with {' or '.join(schemes)}")
        return items

    values = "comma-separated " + ", ".join(f"`{s}`" for s in schemes) + " URLs"
    setting = Setting(
        name,
        doc,
        parse,
        values=values + ("; empty for none" if may_be_empty else ""),
        keep_empty=may_be_empty,
    )
    return field_of(setting, default)


def port_or_off(name: str, *, default: int | None, doc: str) -> int | None:
    """A TCP port, or ``off`` for none."""

    def parse(raw: str) -> int | None:
        if raw.lower() == "off":
            return None
        try:
            return int(raw)
        except ValueError:
            raise Invalid("must be a port number or off") from None

    setting = Setting(name, doc, parse, values="1 to 65535, or `off`", minimum=1, maximum=65535)
    return field_of(setting, default)


@overload
def text(
    name: str,
    *,
    default: str,
    doc: str,
    check: Callable[[str], str] | None = None,
    values: str = "",
    shown: str | None = None,
) -> str: ...
@overload
def text(
    name: str,
    *,
    default: None,
    doc: str,
    secret: bool = False,
    check: Callable[[str], str] | None = None,
    values: str = "",
) -> str | None: ...
@overload
def text(
    name: str,
    *,
    default_factory: Callable[[], str],
    shown: str,
    doc: str,
    check: Callable[[str], str] | None = None,
    values: str = "",
) -> str: ...
@overload
def text(
    name: str,
    *,
    doc: str,
    secret: bool = False,
    check: Callable[[str], str] | None = None,
    values: str = "",
    hint: str = "",
) -> str: ...
def text(
    name: str,
    *,
    doc: str,
    default: Any = dataclasses.MISSING,
    default_factory: Any = dataclasses.MISSING,
    secret: bool = False,
    check: Callable[[str], str] | None = None,
    values: str = "",
    shown: str | None = None,
    hint: str = "",
) -> Any:
    """Text: optional (``default=None``), with a default (or a ``default_factory``
    and how the README ``shown`` it), or required (no default; ``hint`` is said
    when it is missing). A ``secret`` is also read from ``NAME_FILE`` and never shown."""
    setting = Setting(
        name, doc, str, values=values, secret=secret, check=check, shown=shown, hint=hint
    )
    return dataclasses.field(
        default=default, default_factory=default_factory, metadata={_SETTING: setting}
    )


def process_id(name: str, *, doc: str) -> str:
    """A process's id on the bus: random unless set, usable as a subject token."""
    setting = Setting(
        name, doc, str, values="letters, digits, `-`, `_`", check=token_id, shown="random"
    )
    return dataclasses.field(default_factory=new_token_id, metadata={_SETTING: setting})


def nested(cls: type[_C]) -> _C:
    """Settings of their own (the NATS credentials), read from the same environment."""
    return dataclasses.field(default_factory=cls, metadata={_NESTED: cls})


@dataclasses.dataclass(frozen=True, slots=True)
class MinLength:
    """A check: at least ``count`` characters (or UTF-8 bytes)."""

    count: int
    unit: Literal["characters", "bytes"] = "characters"

    @property
    def values(self) -> str:
        return f"at least {self.count} {self.unit}"

    def __call__(self, value: str) -> str:
        length = len(value.encode()) if self.unit == "bytes" else len(value)
        if length < self.count:
            raise Invalid(f"must be {self.values} long")
        return value


def token_id(value: str) -> str:
    """A check: an id that can be a subject token (a worker's, a dispatcher's)."""
    if not is_token_id(value):
        raise Invalid("may contain only letters, digits, '-' and '_' (max 64)")
    return value


def http_url(value: str) -> str:
    """A check: an http(s) URL (not repeated in the message: it may hold a token)."""
    if not value.startswith(("http://", "https://")):
        raise Invalid("must be an http(s) URL")
    return value


# --- settings classes ---------------------------------------------------------------


class Settings:
    """What every settings class has: `from_env`, checks across fields
    (`validate`), and a repr that hides secrets."""

    __slots__ = ()
    __dataclass_fields__: ClassVar[dict[str, "dataclasses.Field[Any]"]]

    @classmethod
    def from_env(cls: type[_C], environ: Mapping[str, str], record: set[str] | None = None) -> _C:
        """Read once at the entry point; a bad value raises `ConfigError`
        naming the variable. ``record`` collects every variable looked up."""
        return cls.read(Env(environ, record))

    @classmethod
    def read(cls: type[_C], env: Env) -> _C:
        """Each declared field in order (a bound names a field read before),
        nested settings from the same ``env``, then `validate`."""
        values: dict[str, Any] = {}
        known: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if _NESTED in f.metadata:
                values[f.name] = f.metadata[_NESTED].read(env)
            elif _SETTING in f.metadata:
                setting: Setting = f.metadata[_SETTING]
                value = setting.read(env, _default(f), known)
                values[f.name] = known[setting.name] = value
        made = cls(**values)
        made.validate()
        return made

    def validate(self) -> None:
        """Checks that involve several fields; raise `ConfigError`."""

    def __repr__(self) -> str:
        shown = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            setting = f.metadata.get(_SETTING)
            hidden = setting is not None and setting.secret and value is not None
            shown.append(f"{f.name}={'***' if hidden else repr(value)}")
        return f"{type(self).__name__}({', '.join(shown)})"


def _default(f: "dataclasses.Field[Any]") -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


@dataclass_transform(
    kw_only_default=True,
    frozen_default=True,
    field_specifiers=(
        dataclasses.field,
        text,
        integer,
        number,
        flag,
        choice,
        listed,
        port_or_off,
        process_id,
        nested,
    ),
)
def settings_class(cls: type[_C]) -> type[_C]:
    """A frozen, slotted, keyword-only dataclass of `Settings`, its
    declarations checked at import."""
    made = dataclasses.dataclass(frozen=True, slots=True, kw_only=True, repr=False)(cls)
    earlier: dict[str, Any] = {}
    for setting, default in _declared(made):
        if setting.shown is None and default is _FACTORY:
            raise TypeError(f"{setting.name}: a default made by a factory needs `shown`")
        setting.check_declaration(default, earlier)
        earlier[setting.name] = default
    return made


_FACTORY = object()


def _declared(cls: type[Settings]) -> list[tuple[Setting, Any]]:
    """Every setting of ``cls`` and of its nested settings, with its default
    (``MISSING``: required; ``_FACTORY``: made at start)."""
    found: list[tuple[Setting, Any]] = []
    for f in dataclasses.fields(cls):
        if _NESTED in f.metadata:
            found.extend(_declared(f.metadata[_NESTED]))
        elif _SETTING in f.metadata:
            has_factory = f.default_factory is not dataclasses.MISSING
            found.append((f.metadata[_SETTING], _FACTORY if has_factory else f.default))
    return found


def declared_names(cls: type[Settings]) -> set[str]:
    """The variables ``cls`` reads (a secret's ``NAME_FILE`` too)."""
    names = set()
    for setting, _ in _declared(cls):
        names.add(setting.name)
        if setting.secret:
            names.add(f"{setting.name}_FILE")
    return names


# --- the README table ----------------------------------------------------------------


def settings_table(roles: Sequence[tuple[str, type[Settings]]]) -> str:
    """The README's configuration table, from the declarations: one row per
    variable (a declaration that several roles share is one row, "all" when
    every role has it), then the secrets that may be read from files."""
    rows: dict[int, tuple[Setting, Any, list[str]]] = {}
    for role, cls in roles:
        for setting, default in _declared(cls):
            rows.setdefault(id(setting), (setting, default, []))[2].append(role)
    everyone = [role for role, _ in roles]
    ordered = sorted(rows.values(), key=lambda row: len(row[2]) > 1)  # stable: shared last
    lines = [
        "| variable | role | default | values | meaning |",
        "| --- | --- | --- | --- | --- |",
    ]
    for setting, default, used_by in ordered:
        if "|" in setting.doc + setting.described_values():
            raise ValueError(f"{setting.name}: a table cell cannot hold '|'")
        role = "all" if used_by == everyone else ", ".join(used_by)
        cells = [f"`{setting.name}`", role, _shown_default(setting, default)]
        lines.append(f"| {' | '.join([*cells, setting.described_values(), setting.doc])} |")
    secrets = sorted({f"`{s.name}_FILE`" for s, _, _ in rows.values() if s.secret})
    lines += ["", f"Secrets may instead be read from files: {', '.join(secrets)}."]
    return "\n".join(lines) + "\n"


def _shown_default(setting: Setting, default: Any) -> str:
    if setting.shown is not None:
        return setting.shown
    if default is dataclasses.MISSING:
        return "required"
    if default is None or default == ():
        return "\N{EN DASH}"
    return f"`{_show(default)}`"

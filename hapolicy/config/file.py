"""The config file: `key = value` lines, `service = SPEC` lines and `[pool NAME]` sections.

A key is an option's long name (`-` or `_`) or its record's field (options.py), `#` starts a
comment line. Keys before the first section are the daemon's and the defaults of every pool;
the keys of a section are its pool's. A file without sections is one pool named `default`.
`read_config_file` reads the lines into sections; `assemble` (with the command line's
settings) checks the whole and makes the `DaemonConfig` and its `PoolConfig`s, each setting
going to the record of its option's scope. Every error is a `ConfigError` naming `FILE:LINE:`
where a line is to blame.

Only `\n` ends a line: U+0085, U+2028 and the other line ends of `str.splitlines` are
characters of the line, and a value that holds one inside is refused with every other
character that is not printable (values.check_text). The file is at most MAX_FILE_BYTES, a
line at most MAX_LINE characters, and it has at most MAX_POOLS pools of at most MAX_SERVICES
services.
"""

from __future__ import annotations

from hapolicy.config.cachecheck import cache_problem
from hapolicy.config.option import DAEMON, SECTION
from hapolicy.config.options import FILE_KEYS, SETTINGS
from hapolicy.config.parsers import parse_service
from hapolicy.config.records import DaemonConfig, PoolConfig
from hapolicy.config.values import MAX_SERVICES, ConfigError, is_name

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from hapolicy.config.records import Service

MAX_FILE_BYTES = 1 << 20
MAX_LINE = 8192  # longer than any value's bound (options.py), short enough to show in an error
MAX_POOLS = 256


class Section:
    """The lines of one part of the file: before the first section (name ""), or a pool's."""

    def __init__(self, name: str, line: int) -> None:
        self.name = name
        self.line = line
        self.settings: dict[str, Any] = {}
        self.lines: dict[str, int] = {}  # the line of each setting, and of the first service
        self.services: list[Service] = []


class ConfigFile:
    """A parsed file: its path, what comes before any section, and the pool sections."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.top = Section("", 0)
        self.sections: list[Section] = []


def read_config_file(path: str) -> ConfigFile:
    """Parse a config file into its sections; raises ConfigError `FILE:LINE: ...`."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
        lines = data.decode("utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", exc)
        raise ConfigError(f"{path}: cannot read config file: {why}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"{path}: cannot read config file: larger than {MAX_FILE_BYTES} bytes")
    parsed = ConfigFile(path)
    section = parsed.top
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            if len(text) > MAX_LINE:
                raise ConfigError(f"line longer than {MAX_LINE} characters")
            if text.startswith("["):
                section = _new_section(parsed, text, number)
            else:
                _read_line(section, text, number)
        except ConfigError as exc:
            raise ConfigError(f"{path}:{number}: {exc}") from None
    return parsed


def _new_section(parsed: ConfigFile, text: str, number: int) -> Section:
    kind, _, name = text[1:-1].strip().partition(" ") if text.endswith("]") else ("", "", "")
    name = name.strip()
    if kind != "pool" or not is_name(name):
        raise ConfigError(f"expected a section '[pool NAME]' (NAME: 1-64 of A-Z a-z 0-9 _ . -), "
                          f"got {text!r}")
    if len(parsed.sections) == MAX_POOLS:
        raise ConfigError(f"more than {MAX_POOLS} pools")
    for other in parsed.sections:
        if other.name == name:
            raise ConfigError(f"pool {name!r} is given twice (first on line {other.line})")
    section = Section(name, number)
    parsed.sections.append(section)
    return section


def _read_line(section: Section, text: str, number: int) -> None:
    key, sep, value = text.partition("=")
    key = key.strip().lower().replace("-", "_")
    if not sep:
        raise ConfigError(f"expected 'key = value', got {text!r}")
    value = value.strip()
    where = f" in pool {section.name}" if section.name else ""
    if key == "service":
        service = parse_service(value)
        for other in section.services:
            if other.name == service.name:
                raise ConfigError(f"service name {service.name!r} is given twice{where} "
                                  f"(first on line {section.lines['service ' + other.name]})")
        if len(section.services) == MAX_SERVICES:
            raise ConfigError(f"more than {MAX_SERVICES} services{where}")
        section.lines["service " + service.name] = number
        section.lines.setdefault("service", number)
        section.services.append(service)
        return
    option = FILE_KEYS.get(key)
    if option is None:
        raise ConfigError(f"unknown setting {key.replace('_', '-')!r}")
    if section.name and option.scope == DAEMON:
        raise ConfigError(f"{option.name} is a setting of the daemon, not of pool "
                          f"{section.name}: set it before the first [pool] section")
    if option.key in section.lines:
        raise ConfigError(f"{option.name} set again{where} (first on line "
                          f"{section.lines[option.key]})")
    section.lines[option.key] = number
    section.settings[option.key] = option.parse(value)  # type: ignore[misc]


def assemble(parsed: ConfigFile | None, settings: dict[str, Any],
             services: list[Service]) -> DaemonConfig:
    """The DaemonConfig of a file (or none) and the command line's settings and services, which
    win over the file's; with [pool] sections, a PoolConfig of every section."""
    if parsed is None or not parsed.sections:
        top = parsed.top if parsed is not None else Section("", 0)
        daemon, pool = split_by_scope({**top.settings, **settings})
        config = build_pool(pool, services or top.services)
        if config.shadow:
            where = f"{parsed.path}:{top.lines['shadow']}: " if "shadow" in top.lines else ""
            raise ConfigError(f"{where}shadow {config.shadow}: no such pool (a shadow is "
                              "another [pool] section of the config file)")
        _check_cache(config, parsed.path if parsed is not None else "", top)
        return DaemonConfig(pools=(config,), **daemon)
    if services:
        raise ConfigError(f"{parsed.path}: -s cannot be used with a file of [pool] sections")
    for key in ("service", *(k for k, o in FILE_KEYS.items() if o.scope == SECTION)):
        if key in parsed.top.lines:
            raise ConfigError(f"{parsed.path}:{parsed.top.lines[key]}: {key.replace('_', '-')} "
                              "outside any [pool] section: in a file of pools, it belongs to "
                              "one pool")
    pools = [_section_pool(parsed, section, settings) for section in parsed.sections]
    _check_shadows(parsed, pools)
    for section, pool in zip(parsed.sections, pools):
        _check_cache(pool, parsed.path, section)
    _check_addresses(parsed, pools)
    daemon, _ = split_by_scope({**parsed.top.settings, **settings})
    return DaemonConfig(pools=tuple(pools), **daemon)


def split_by_scope(settings: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the daemon's, a pool's) of settings by their option's scope; a key that is no option's
    (`config_file`) is the daemon's."""
    daemon: dict[str, Any] = {}
    pool: dict[str, Any] = {}
    for key, value in settings.items():
        option = SETTINGS.get(key)
        (daemon if option is None or option.scope == DAEMON else pool)[key] = value
    return daemon, pool


def _section_pool(parsed: ConfigFile, section: Section, settings: dict[str, Any]) -> PoolConfig:
    """The pool of one section: the file's defaults, its own settings, the command line's."""
    where = f"{parsed.path}:{section.line}: pool {section.name}: "
    _, values = split_by_scope({**parsed.top.settings, **section.settings, **settings})
    try:
        return build_pool({**values, "name": section.name, "from_section": True},
                          section.services, where)
    except ConfigError as exc:
        message = str(exc)
        raise ConfigError(message if message.startswith(parsed.path) else where + message
                          ) from None


def build_pool(settings: dict[str, Any], services: list[Service], where: str = "") -> PoolConfig:
    """Check one pool as a whole and make it (`where`: the pool named in errors)."""
    if not services:
        raise ConfigError(f"{where}no service given: use "
                          + ("service = NAME=HOST:PORT[...]" if where else
                             "-s NAME=HOST:PORT[:PRIO[:WEIGHT[:TIMEOUT]]]"))
    if len(services) > MAX_SERVICES:
        raise ConfigError(f"{where}more than {MAX_SERVICES} services")
    names: set[str] = set()
    for service in services:
        if service.name in names:
            raise ConfigError(f"service name {service.name!r} is given twice")
        names.add(service.name)
    pool = PoolConfig(services=tuple(services), **settings)
    if pool.cooldown_max < pool.cooldown:
        raise ConfigError(f"{where}cooldown-max {pool.cooldown_max} is below cooldown "
                          f"{pool.cooldown}")
    return pool


def _check_addresses(parsed: ConfigFile, pools: list[PoolConfig]) -> None:
    """Every pool listens (or none: one pool in spawn mode); pools that share an address each
    name a policy context, no context twice."""
    lines = {s.name: s.line for s in parsed.sections}
    listening = [p for p in pools if p.listen]
    shadows = {p.shadow for p in pools}
    for pool in pools:
        where = f"{parsed.path}:{lines[pool.name]}: pool {pool.name}"
        if not pool.listen and pool.name in shadows and listening:
            continue  # a shadow only: asked by the pools it shadows
        if not pool.listen and (listening or len(pools) > 1):
            raise ConfigError(f"{where}: no listen address (several pools need the daemon)")
        for address in pool.listen.split():
            before = [p for p in listening[:listening.index(pool)] if address in p.listen.split()]
            if not before:
                continue
            if not pool.policy_context or not before[0].policy_context:
                raise ConfigError(f"{where}: shares {address} with pool {before[0].name}; pools "
                                  "on one address need a policy-context each")
            same = [p for p in before if p.policy_context == pool.policy_context]
            if same:
                raise ConfigError(f"{where}: policy-context {pool.policy_context} on {address} "
                                  f"is pool {same[0].name}'s already")


def _check_shadows(parsed: ConfigFile, pools: list[PoolConfig]) -> None:
    """A shadow is another pool of the file, and following shadows never comes back to a pool
    (a copied request is not copied again, but a loop is a mistake)."""
    by_name = {p.name: p for p in pools}
    for section, pool in zip(parsed.sections, pools):
        if not pool.shadow:
            continue
        line = section.lines.get("shadow", section.line)
        where = f"{parsed.path}:{line}: pool {pool.name}: shadow {pool.shadow}"
        if pool.shadow == pool.name:
            raise ConfigError(f"{where}: a pool cannot be its own shadow")
        if pool.shadow not in by_name:
            raise ConfigError(f"{where}: no such pool")
        seen = [pool.name]
        name = pool.shadow
        while name:
            if name in seen:
                chain = " -> ".join([*seen, name])
                raise ConfigError(f"{where}: shadows go round in a loop ({chain})")
            seen.append(name)
            name = by_name[name].shadow if name in by_name else ""


def _check_cache(pool: PoolConfig, path: str, section: Section) -> None:
    """A pool that caches is one without state, or says cache-force (cachecheck.py); the error
    names the line of its cache setting."""
    problem = cache_problem(pool)
    if not problem:
        return
    line = section.lines.get("cache", section.lines.get("cache_stale", section.line))
    where = f"{path}:{line}: " if path and line else ""
    named = f"pool {pool.name}: " if pool.from_section else ""
    raise ConfigError(f"{where}{named}{problem}")

"""`arena-pref config show | fields`: what a config resolves to, and what each field means."""

from __future__ import annotations

from arena_pref.commands.options import HelpFormatter, load_run_config
from pref_core.errors import UserError


def register(sub) -> None:
    """`arena-pref config show|fields`: what a config resolves to, and what each field means."""
    config = sub.add_parser("config", help="show a resolved config, or list every config field")
    actions = config.add_subparsers(
        dest="config_command",
        required=True,
        metavar="{show,fields}",
        help="show: the resolved YAML; fields: each field's type, default and description",
    )
    show = actions.add_parser(
        "show", help="print the resolved, validated config as YAML", formatter_class=HelpFormatter
    )
    show.add_argument("config", help="YAML recipe, e.g. configs/tiny.yaml")
    show.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set train.learning_rate=1e-4 (repeatable)",
    )
    show.set_defaults(func=cmd_config_show)
    fields = actions.add_parser(
        "fields", help="list each field: dotted name, type, default, description", formatter_class=HelpFormatter
    )
    fields.add_argument("prefix", nargs="?", default=None, help="only this field or section, e.g. train or cv.folds")
    fields.set_defaults(func=cmd_config_fields)


def cmd_config_show(args) -> int:
    """The resolved, validated config as YAML: defaults filled in, overrides applied."""
    from pref_core.config.loading import config_yaml

    args.console.print(config_yaml(load_run_config(args.config, args.set)).rstrip("\n"))
    return 0


def cmd_config_fields(args) -> int:
    """Every leaf field of the config: dotted name, type, default, then its description, indented."""
    import textwrap

    from pref_core.config.fields import describe_fields

    prefix = (args.prefix or "").rstrip(".")
    docs = [d for d in describe_fields() if not prefix or d.name == prefix or d.name.startswith(prefix + ".")]
    if not docs:
        raise UserError(f"no config field or section {args.prefix!r}; `arena-pref config fields` lists them all")
    # A few choice types are long (lr_scheduler): they push their own default right rather than every row's.
    name_width, type_width = max(len(d.name) for d in docs), min(24, max(len(d.type) for d in docs))
    console = args.console
    console.print(f"{'field':<{name_width}}  {'type':<{type_width}}  default")
    for doc in docs:
        neutral = "  (result-neutral: not in the run key)" if doc.result_neutral else ""
        console.print(f"{doc.name:<{name_width}}  {doc.type:<{type_width}}  {doc.default}{neutral}")
        for line in textwrap.wrap(doc.description, width=96):
            console.print(f"    {line}")
    return 0

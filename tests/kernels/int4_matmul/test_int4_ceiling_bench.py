"""`experiments/bench/int4_ceiling.py` on CPU: its help, its argument checks and `--quick` (the plan, and the Pallas
mma.sync kernels lowered for CUDA), in-process so that the benchmark cannot rot before the next H100 call."""

import contextlib
import importlib.util
import io
import json
import tempfile
import unittest

from support.launch import REPO


def _load():
  spec = importlib.util.spec_from_file_location("int4_ceiling", REPO / "experiments" / "bench" / "int4_ceiling.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


class Int4CeilingBenchTest(unittest.TestCase):

  @classmethod
  def setUpClass(cls):
    cls.bench = _load()

  def test_help_and_bad_arguments(self):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), self.assertRaises(SystemExit) as done:
      self.bench.main(["--help"])
    self.assertEqual(done.exception.code, 0)
    self.assertIn("--quick", out.getvalue())
    with contextlib.redirect_stderr(io.StringIO()) as err, self.assertRaises(SystemExit) as done:
      self.bench.main(["--kn", "3072by12288"])
    self.assertEqual(done.exception.code, 2)
    self.assertIn("KxN", err.getvalue())

  def test_quick_plans_every_shape_and_lowers_the_mma_kernels(self):
    path = self.enterContext(tempfile.TemporaryDirectory()) + "/ceiling.json"
    with contextlib.redirect_stdout(io.StringIO()):
      self.bench.main(["--quick", "--out", path, "--m", "1", "4096", "--kn", "3072x12288"])
    report = json.loads(open(path).read())
    self.assertTrue(report["quick"])
    mma = [row for row in report["rows"] if row["part"] == "mma"]
    self.assertEqual([row["instruction"] for row in mma], list(self.bench.PALLAS_MMA))
    self.assertTrue(all(row["lowered"] for row in mma), mma)
    plan = next(row for row in report["rows"] if row["part"] == "plan")
    self.assertEqual(plan["fp8_shapes"], [[1, 3072, 12288], [4096, 3072, 12288]])
    self.assertEqual(plan["weight_sets"], {"3072x12288": 4})  # 37.7 MB of e4m3 weights a set: 4 sets beat the L2


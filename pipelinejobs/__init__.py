"""PipelineJobs Manager: the Abaco actor that keeps the state of research pipeline jobs.

Import from the module paths (``pipelinejobs.service``, ``pipelinejobs.client`` ...);
this package file only carries the version so that importing it stays cheap.
"""

__version__ = "0.1.0"

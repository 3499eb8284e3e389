"""The project's configuration: the YAML files of jobs and runs (and DeepSpeed's JSON) beside the one
module that reads them into typed dataclass trees for both command lines (dataclass_io)."""

"""Documentation of the `aws` option: how a module reaches AWS's APIs (transfer=s3 / ebs).

Shared by `checkpoint_transfer`, `critical_path`, `predump_loop`, `transfer_storage` and
`ebs_attachment`; the argument spec it documents is `AWS_OPTIONS` in
module_utils/transfer_backends.py.
"""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  aws:
    description:
      - How the programs that call AWS's APIs get their region and credentials (C(transfer=s3)
        and C(ebs)). Left empty, boto3's standard chain decides (the instance profile on EC2).
    type: dict
    suboptions:
      region:
        description: The region (C(AWS_DEFAULT_REGION)).
        type: str
      environment:
        description: Plain environment variables for them (the labs set
          C(AWS_EC2_METADATA_DISABLED=true)).
        type: dict
        default: {}
      credentials:
        description: Credential variables (C(AWS_ACCESS_KEY_ID), C(AWS_SECRET_ACCESS_KEY),
          C(AWS_SESSION_TOKEN)) - the labs' throwaway ones; masked in every result, handed to
          the S3 tool on its stdin, never on a command line.
        type: dict
        default: {}
      tools_dir:
        description: Where the standalone tools are on the nodes (C(s3_transfer.py)).
        type: path
"""

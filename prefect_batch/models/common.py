"""Small value objects shared by pools, jobs, tasks and nodes.

Environment settings, metadata, errors, resource and output files, user identities, container
settings, application package references and node file listings, in Azure Batch's wire format.

This module does not download resource files or upload output files; it only describes them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from prefect_batch.models.base import (
    NonEmptyStr,
    OpaqueObject,
    RequestModel,
    ResponseModel,
    UtcDateTime,
)

__all__ = [
    "AutoUserSpecification",
    "BatchApplicationPackageReference",
    "BatchError",
    "BatchErrorDetail",
    "BatchErrorMessage",
    "BatchMetadataItem",
    "BatchNodeFile",
    "BatchTaskContainerSettings",
    "EnvironmentSetting",
    "FileProperties",
    "NameValuePair",
    "OutputFile",
    "OutputFileBlobContainerDestination",
    "OutputFileDestination",
    "OutputFileUploadConfiguration",
    "OutputFileUploadHeader",
    "ResourceFile",
    "UserIdentity",
]


class EnvironmentSetting(RequestModel):
    """An environment variable set for a task's process."""

    name: NonEmptyStr = Field(description="The name of the environment variable.")
    value: str | None = Field(default=None, description="The value of the environment variable.")


class BatchMetadataItem(RequestModel):
    """A name-value pair attached to a pool or job; Batch gives it no meaning."""

    name: NonEmptyStr = Field(description="The name of the metadata item.")
    value: str = Field(description="The value of the metadata item.")


class NameValuePair(ResponseModel):
    """A name-value pair in error details and node errors."""

    name: str | None = Field(default=None, description="The name in the name-value pair.")
    value: str | None = Field(default=None, description="The value in the name-value pair.")


class BatchErrorMessage(ResponseModel):
    """The human-readable message of a :class:`BatchError`."""

    lang: str | None = Field(
        default=None, description="The language code of the message, e.g. 'en-US'."
    )
    value: str | None = Field(default=None, description="The text of the message.")


class BatchErrorDetail(ResponseModel):
    """One key-value item of additional error information."""

    key: str | None = Field(default=None, description="What the value field means.")
    value: str | None = Field(default=None, description="The additional information.")


class BatchError(ResponseModel):
    """An error answered by the Batch service (Azure's OData error body)."""

    code: str | None = Field(
        default=None, description="An identifier for the error, e.g. 'JobNotFound'."
    )
    message: BatchErrorMessage | None = Field(
        default=None, description="A message describing the error, fit for a user interface."
    )
    error_values: list[BatchErrorDetail] | None = Field(
        default=None,
        alias="values",
        description="Key-value pairs with more detail about the error.",
    )


class ResourceFile(RequestModel):
    """A file, or a blob container's files, to download to a node before a task runs.

    Exactly one of ``autoStorageContainerName``, ``storageContainerUrl`` and ``httpUrl`` is given.
    """

    auto_storage_container_name: str | None = Field(
        default=None,
        alias="autoStorageContainerName",
        description="The storage container name in the auto storage account.",
    )
    storage_container_url: str | None = Field(
        default=None,
        alias="storageContainerUrl",
        description="The URL of the blob container whose blobs are downloaded.",
    )
    http_url: str | None = Field(default=None, alias="httpUrl", description="The URL of the file.")
    blob_prefix: str | None = Field(
        default=None,
        alias="blobPrefix",
        description="Only blobs whose names begin with this prefix are downloaded.",
    )
    file_path: str | None = Field(
        default=None,
        alias="filePath",
        description="Where to put the file(s), relative to the task's working directory.",
    )
    file_mode: str | None = Field(
        default=None,
        alias="fileMode",
        description="The octal file permission mode, e.g. '0644' (Linux).",
    )
    identity_reference: OpaqueObject | None = Field(
        default=None,
        alias="identityReference",
        description="The managed identity used to access the storage; accepted, not used.",
    )


class OutputFileUploadHeader(RequestModel):
    """An HTTP header sent with every output file upload."""

    name: NonEmptyStr = Field(description="The case-insensitive name of the header.")
    value: str | None = Field(default=None, description="The value of the header.")


class OutputFileBlobContainerDestination(RequestModel):
    """A blob container (or prefix in one) that output files are uploaded to."""

    path: str | None = Field(
        default=None, description="The destination blob or virtual directory within the container."
    )
    container_url: NonEmptyStr = Field(
        alias="containerUrl", description="The URL of the container, with write access."
    )
    identity_reference: OpaqueObject | None = Field(
        default=None,
        alias="identityReference",
        description="The managed identity used to write to the container; accepted, not used.",
    )
    upload_headers: list[OutputFileUploadHeader] | None = Field(
        default=None, alias="uploadHeaders", description="Extra HTTP headers sent with each upload."
    )


class OutputFileDestination(RequestModel):
    """Where an output file goes."""

    container: OutputFileBlobContainerDestination | None = Field(
        default=None, description="A blob container the files are uploaded to."
    )


OutputFileUploadCondition = Literal["tasksuccess", "taskfailure", "taskcompletion"]


class OutputFileUploadConfiguration(RequestModel):
    """When an output file is uploaded."""

    upload_condition: OutputFileUploadCondition = Field(
        alias="uploadCondition",
        description="Upload after success, after failure, or after any completion.",
    )


class OutputFile(RequestModel):
    """Files a node uploads after a task's process exits."""

    file_pattern: NonEmptyStr = Field(
        alias="filePattern",
        description="A path or glob ('*', '**', '?', '[abc]'), relative to the working directory.",
    )
    destination: OutputFileDestination = Field(description="Where the files are uploaded to.")
    upload_options: OutputFileUploadConfiguration = Field(
        alias="uploadOptions", description="When the files are uploaded."
    )


class AutoUserSpecification(RequestModel):
    """The auto-user account a task runs as."""

    scope: Literal["task", "pool"] | None = Field(
        default=None,
        description="Whether the auto user is unique to the task or shared by the pool.",
    )
    elevation_level: Literal["nonadmin", "admin"] | None = Field(
        default=None, alias="elevationLevel", description="Whether the user is an administrator."
    )


class UserIdentity(RequestModel):
    """Who a task runs as: a named user account or an auto user, not both."""

    username: str | None = Field(
        default=None, description="A user account defined on the pool (``userAccounts``)."
    )
    auto_user: AutoUserSpecification | None = Field(
        default=None, alias="autoUser", description="The auto user the task runs as."
    )


class BatchTaskContainerSettings(RequestModel):
    """The container a task runs in (accepted; prefect-batch runs only what its nodes allow)."""

    container_run_options: str | None = Field(
        default=None,
        alias="containerRunOptions",
        description="Extra options for the container create command.",
    )
    image_name: NonEmptyStr = Field(
        alias="imageName", description="The image to create the container from."
    )
    registry: OpaqueObject | None = Field(
        default=None,
        description="The private registry holding the image; accepted, not interpreted.",
    )
    working_directory: Literal["taskWorkingDirectory", "containerImageDefault"] | None = Field(
        default=None,
        alias="workingDirectory",
        description="Whether the task starts in its own directory or the image's working dir.",
    )
    container_host_batch_bind_mounts: list[OpaqueObject] | None = Field(
        default=None,
        alias="containerHostBatchBindMounts",
        description="Host paths mounted into the container; accepted, not interpreted.",
    )


class BatchApplicationPackageReference(RequestModel):
    """An application package deployed to nodes."""

    application_id: NonEmptyStr = Field(
        alias="applicationId", description="The id of the application."
    )
    version: str | None = Field(
        default=None, description="The version to deploy; the application's default when omitted."
    )


class FileProperties(ResponseModel):
    """Properties of a file on a node."""

    creation_time: UtcDateTime | None = Field(
        default=None, alias="creationTime", description="When the file was created (Windows only)."
    )
    last_modified: UtcDateTime | None = Field(
        default=None, alias="lastModified", description="When the file was last modified."
    )
    content_length: int | None = Field(
        default=None, alias="contentLength", description="The length of the file in bytes."
    )
    content_type: str | None = Field(
        default=None, alias="contentType", description="The content type of the file."
    )
    file_mode: str | None = Field(
        default=None, alias="fileMode", description="The octal permission mode of the file (Linux)."
    )


class BatchNodeFile(ResponseModel):
    """A file or directory on a node, as listed by the file API."""

    name: str | None = Field(
        default=None, description="The path of the file, relative to its root."
    )
    url: str | None = Field(default=None, description="The URL of the file.")
    is_directory: bool | None = Field(
        default=None, alias="isDirectory", description="Whether the entry is a directory."
    )
    properties: FileProperties | None = Field(default=None, description="The file's properties.")

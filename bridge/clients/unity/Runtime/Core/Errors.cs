// Every error a request can end with, as a typed exception: the sidecar's error codes (bridge/PROTOCOL.md,
// "Error codes"; bridge/protocol.py ErrorCode) and the client's own (timeout, disconnected, protocol).

using System;

namespace Narrative.Sidecar
{
    /// <summary>Why a request failed. The first group mirrors the sidecar's <c>error.code</c> values; switch on these, never on messages.</summary>
    public enum ErrorCode
    {
        /// <summary>A code this client does not know (a newer sidecar); see <see cref="SidecarException.CodeName"/>.</summary>
        Unknown = 0,
        /// <summary><c>bad_frame</c>: not msgpack, not a map, or more than one payload frame.</summary>
        BadFrame,
        /// <summary><c>frame_too_large</c>: the request payload is over <c>ready.limits.max_frame_bytes</c>.</summary>
        FrameTooLarge,
        /// <summary><c>unknown_type</c>: <c>type</c> is not a request type.</summary>
        UnknownType,
        /// <summary><c>unsupported_version</c>: <c>v</c> is newer than the sidecar's.</summary>
        UnsupportedVersion,
        /// <summary><c>invalid</c>: a field is missing, of the wrong type or out of bounds; the message names each field.</summary>
        Invalid,
        /// <summary><c>unknown_npc</c>: <c>npc</c> is not an NPC in the lore index; the message lists the known ones.</summary>
        UnknownNpc,
        /// <summary><c>unknown_request</c>: <c>cancel</c> names a request that is not running.</summary>
        UnknownRequest,
        /// <summary><c>busy</c>: too many requests queued (this connection's or all); send it again after <see cref="BusyException.RetryAfterMs"/>.</summary>
        Busy,
        /// <summary><c>unknown_quest</c>: <c>generate</c> names a quest id that has no spec.</summary>
        UnknownQuest,
        /// <summary><c>generation_failed</c>: <c>generate</c> got no valid text after its bounded retries.</summary>
        GenerationFailed,
        /// <summary><c>internal</c>: the sidecar failed on this request; it keeps serving.</summary>
        Internal,
        /// <summary><c>context_overflow</c>: say's max_tokens is over <c>ready.limits.max_tokens</c>, or the NPC's prefix and the line alone do not fit.</summary>
        ContextOverflow,
        /// <summary><c>unsupported_schema</c>: declare: an action's argument schema or a field uses what the sidecar cannot enforce; the message names the action and the property.</summary>
        UnsupportedSchema,

        /// <summary>Client side: no reply (or no next chunk) within the request's timeout.</summary>
        Timeout = 100,
        /// <summary>Client side: the connection dropped while the request was in flight; it was not resent.</summary>
        Disconnected,
        /// <summary>Client side: the sidecar sent something this client cannot read (not msgpack, wrong field types, unexpected reply type).</summary>
        Protocol,
    }

    /// <summary>A request failed. <see cref="Code"/> says why; <see cref="RequestId"/> names the request.
    /// Subclasses exist for every code, so callers can catch the one they handle.</summary>
    public class SidecarException : Exception
    {
        public ErrorCode Code { get; private set; }
        /// <summary>The wire code (e.g. <c>unknown_npc</c>); for client-side errors <c>timeout</c>, <c>disconnected</c>, <c>protocol</c>.</summary>
        public string CodeName { get; private set; }
        /// <summary>The id of the request that failed (<c>"?"</c> when the sidecar could not read the frame).</summary>
        public string RequestId { get; private set; }
        /// <summary>The sidecar's message (for people), without the code prefix.</summary>
        public string Detail { get; private set; }

        public SidecarException(ErrorCode code, string codeName, string detail, string requestId, Exception inner = null)
            : base(codeName + ": " + detail, inner)
        {
            Code = code; CodeName = codeName; Detail = detail; RequestId = requestId;
        }

        /// <summary>Wire code -> enum (<see cref="ErrorCode.Unknown"/> for codes this client does not know).</summary>
        public static ErrorCode Parse(string code)
        {
            switch (code)
            {
                case "bad_frame": return ErrorCode.BadFrame;
                case "frame_too_large": return ErrorCode.FrameTooLarge;
                case "unknown_type": return ErrorCode.UnknownType;
                case "unsupported_version": return ErrorCode.UnsupportedVersion;
                case "invalid": return ErrorCode.Invalid;
                case "unknown_npc": return ErrorCode.UnknownNpc;
                case "unknown_request": return ErrorCode.UnknownRequest;
                case "busy": return ErrorCode.Busy;
                case "unknown_quest": return ErrorCode.UnknownQuest;
                case "generation_failed": return ErrorCode.GenerationFailed;
                case "internal": return ErrorCode.Internal;
                case "context_overflow": return ErrorCode.ContextOverflow;
                case "unsupported_schema": return ErrorCode.UnsupportedSchema;
                default: return ErrorCode.Unknown;
            }
        }

        /// <summary>The typed exception for an <c>error</c> message from the sidecar.</summary>
        public static SidecarException FromError(ErrorMessage e)
        {
            string c = e.Code, d = e.Text, id = e.Id;
            switch (Parse(c))
            {
                case ErrorCode.BadFrame: return new BadFrameException(d, id);
                case ErrorCode.FrameTooLarge: return new FrameTooLargeException(d, id);
                case ErrorCode.UnknownType: return new UnknownTypeException(d, id);
                case ErrorCode.UnsupportedVersion: return new UnsupportedVersionException(d, id);
                case ErrorCode.Invalid: return new InvalidRequestException(d, id);
                case ErrorCode.UnknownNpc: return new UnknownNpcException(d, id);
                case ErrorCode.UnknownRequest: return new UnknownRequestException(d, id);
                case ErrorCode.Busy: return new BusyException(d, id, e.RetryAfterMs);
                case ErrorCode.UnknownQuest: return new UnknownQuestException(d, id);
                case ErrorCode.GenerationFailed: return new GenerationFailedException(d, id);
                case ErrorCode.Internal: return new InternalErrorException(d, id);
                case ErrorCode.ContextOverflow: return new ContextOverflowException(d, id);
                case ErrorCode.UnsupportedSchema: return new UnsupportedSchemaException(d, id);
                default: return new SidecarException(ErrorCode.Unknown, c, d, id);
            }
        }
    }

    public sealed class BadFrameException : SidecarException { public BadFrameException(string d, string id) : base(ErrorCode.BadFrame, "bad_frame", d, id) { } }
    public sealed class FrameTooLargeException : SidecarException { public FrameTooLargeException(string d, string id) : base(ErrorCode.FrameTooLarge, "frame_too_large", d, id) { } }
    public sealed class UnknownTypeException : SidecarException { public UnknownTypeException(string d, string id) : base(ErrorCode.UnknownType, "unknown_type", d, id) { } }
    public sealed class UnsupportedVersionException : SidecarException { public UnsupportedVersionException(string d, string id) : base(ErrorCode.UnsupportedVersion, "unsupported_version", d, id) { } }
    public sealed class InvalidRequestException : SidecarException { public InvalidRequestException(string d, string id) : base(ErrorCode.Invalid, "invalid", d, id) { } }
    public sealed class UnknownNpcException : SidecarException { public UnknownNpcException(string d, string id) : base(ErrorCode.UnknownNpc, "unknown_npc", d, id) { } }
    public sealed class UnknownRequestException : SidecarException { public UnknownRequestException(string d, string id) : base(ErrorCode.UnknownRequest, "unknown_request", d, id) { } }
    /// <summary><c>busy</c>: the sidecar has too many requests queued; send the request again after <see cref="RetryAfterMs"/>.</summary>
    public sealed class BusyException : SidecarException
    {
        /// <summary>The error's <c>retry_after_ms</c>: wait at least this long (ms) before sending the request again; null when the sidecar sent none.</summary>
        public int? RetryAfterMs { get; private set; }

        public BusyException(string d, string id, long? retryAfterMs = null) : base(ErrorCode.Busy, "busy", d, id)
        {
            if (retryAfterMs.HasValue) RetryAfterMs = (int)Math.Max(0L, Math.Min(retryAfterMs.Value, int.MaxValue));
        }
    }
    public sealed class UnknownQuestException : SidecarException { public UnknownQuestException(string d, string id) : base(ErrorCode.UnknownQuest, "unknown_quest", d, id) { } }
    public sealed class GenerationFailedException : SidecarException { public GenerationFailedException(string d, string id) : base(ErrorCode.GenerationFailed, "generation_failed", d, id) { } }
    public sealed class InternalErrorException : SidecarException { public InternalErrorException(string d, string id) : base(ErrorCode.Internal, "internal", d, id) { } }
    public sealed class ContextOverflowException : SidecarException { public ContextOverflowException(string d, string id) : base(ErrorCode.ContextOverflow, "context_overflow", d, id) { } }
    public sealed class UnsupportedSchemaException : SidecarException { public UnsupportedSchemaException(string d, string id) : base(ErrorCode.UnsupportedSchema, "unsupported_schema", d, id) { } }

    /// <summary>No reply (or, for a say stream, no next message) within the request's timeout.</summary>
    public sealed class SidecarTimeoutException : SidecarException
    {
        public SidecarTimeoutException(string d, string id) : base(ErrorCode.Timeout, "timeout", d, id) { }
    }

    /// <summary>The connection dropped while the request was in flight (or the client was closed). The request was
    /// not resent: send it again yourself if it is safe to (a say may already have been answered in part).</summary>
    public sealed class SidecarDisconnectedException : SidecarException
    {
        public SidecarDisconnectedException(string d, string id, Exception inner = null) : base(ErrorCode.Disconnected, "disconnected", d, id, inner) { }
    }

    /// <summary>The sidecar sent something this client cannot read, or a reply of an unexpected type.</summary>
    public sealed class SidecarProtocolException : SidecarException
    {
        public SidecarProtocolException(string d, string id, Exception inner = null) : base(ErrorCode.Protocol, "protocol", d, id, inner) { }
    }
}

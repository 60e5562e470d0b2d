import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import NIOHTTPTypes

/// Answers a connection's first request when it asks for an event stream: the router runs it as
/// any request (middleware, authorization, `EventStreamController`), and the response is written
/// straight to the channel. A stream the controller hands to the hub stays open after this returns.
/// The router's middleware runs here too, so the stream's request id and its opening response's
/// duration and status are recorded as for any other request.
struct EventStreamResponder: Sendable {
    let router: RouterResponder<BasicRequestContext>
    let serverName: String?

    func respond(to head: HTTPRequest, on channel: any Channel, logger: Logger) async {
        var logger = logger
        logger[metadataKey: "hb.request.id"] = .stringConvertible(RequestID())
        let request = Request(head: head, body: .init(buffer: ByteBuffer()))
        let context = BasicRequestContext(source: .init(channel: channel, logger: logger))
        var response: Response
        do {
            response = try await router.respond(to: request, context: context)
        } catch {
            // ProblemMiddleware answers every error it sees; this is what slips past it.
            response = Response(status: .internalServerError)
        }
        // The id RequestIDMiddleware chose (the client's or the one made above), for this function's own lines.
        if let requestID = response.headers[.requestID] { logger[metadataKey: RequestIDs.metadataKey] = .string(requestID) }
        // The stream owns the connection: nothing can follow it on this connection.
        response.headers[.connection] = "close"
        if let serverName { response.headers[.server] = serverName }
        if let length = response.body.contentLength, response.headers[.contentLength] == nil {
            response.headers[.contentLength] = String(length)
        }
        let writer = ChannelResponseBodyWriter(channel: channel)
        do {
            try await channel.writeAndFlush(HTTPResponsePart.head(response.head))
            try await response.body.write(writer)
        } catch {
            logger.debug("writing an event stream response failed", metadata: ["error": "\(error)"])
        }
        if !writer.progress.isDetached { channel.close(promise: nil) }
    }
}

/// Writes a response body straight to an HTTP/1 channel. `detach` turns the rest of the body
/// over to the hub: the writer's caller then leaves the connection open.
struct ChannelResponseBodyWriter: ResponseBodyWriter {
    /// Shared by the copies of the writer that the response body passes around.
    final class Progress: @unchecked Sendable {
        var isDetached = false
    }

    let channel: any Channel
    let progress = Progress()

    mutating func write(_ buffer: ByteBuffer) async throws {
        try await channel.writeAndFlush(HTTPResponsePart.body(buffer))
    }

    consuming func finish(_ trailingHeaders: HTTPFields?) async throws {
        try await channel.writeAndFlush(HTTPResponsePart.end(trailingHeaders))
    }

    /// The rest of this response as a sink the hub writes to; at most `capacity` frames wait unsent.
    func detach(capacity: Int) -> ChannelEventStreamSink {
        progress.isDetached = true
        return ChannelEventStreamSink(channel: channel, capacity: capacity)
    }
}

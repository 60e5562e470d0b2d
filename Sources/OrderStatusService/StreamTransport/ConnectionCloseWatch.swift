import NIOCore

/// Tells a request's task that its connection (or HTTP/2 stream) has closed, without reading from
/// it, so a held long poll gives back its place when its client leaves and the connection can
/// still carry the next poll. One handler per channel, added on first use, holds the waiters, so
/// a keep-alive connection serving many polls leaves nothing behind on its close future.
final class ConnectionCloseWatch: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny

    /// Identifies one wait, made before its task may be cancelled.
    final class Waiter: Sendable {}

    private var waiting: [ObjectIdentifier: CheckedContinuation<Void, Never>] = [:]
    /// Waits cancelled before they were registered: their registration resumes at once.
    private var cancelledEarly: Set<ObjectIdentifier> = []
    private var isClosed = false

    func channelInactive(context: ChannelHandlerContext) {
        clientLeft()
        context.fireChannelInactive()
    }

    /// Hummingbird allows half-closed connections, so a client that goes away with a poll held
    /// shows first as the end of its input: nothing more can arrive, and it is treated as gone.
    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .inputClosed = event as? ChannelEvent { clientLeft() }
        context.fireUserInboundEventTriggered(event)
    }

    private func clientLeft() {
        isClosed = true
        for continuation in waiting.values { continuation.resume() }
        waiting.removeAll()
    }

    /// Returns when `channel` closes, or as soon as the calling task is cancelled.
    static func untilClosed(_ channel: any Channel) async {
        let waiter = Waiter()
        let key = ObjectIdentifier(waiter)
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                channel.eventLoop.execute {
                    guard let watch = Self.watch(on: channel), !watch.isClosed, watch.cancelledEarly.remove(key) == nil else {
                        return continuation.resume()
                    }
                    watch.waiting[key] = continuation
                }
            }
        } onCancel: {
            channel.eventLoop.execute {
                guard let watch = Self.watch(on: channel) else { return }
                if let continuation = watch.waiting.removeValue(forKey: key) {
                    continuation.resume()
                } else {
                    watch.cancelledEarly.insert(key)
                }
                _ = waiter
            }
        }
    }

    /// The channel's watch, added the first time; nil when the channel has no pipeline left (closed).
    private static func watch(on channel: any Channel) -> ConnectionCloseWatch? {
        let operations = channel.pipeline.syncOperations
        if let existing = try? operations.handler(type: ConnectionCloseWatch.self) { return existing }
        guard channel.isActive else { return nil }
        let watch = ConnectionCloseWatch()
        do {
            try operations.addHandler(watch, position: .first)
        } catch {
            return nil
        }
        return watch
    }
}

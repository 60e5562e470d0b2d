import NIOCore

/// Closes its channel when its writes make no progress for `timeout`: some write is waiting and
/// none has completed since. That is a client that stopped reading, or an HTTP/2 peer that grants
/// no window (for a stream channel, closing sends RST_STREAM); queued frames would otherwise wait
/// for it for ever. It goes first in the pipeline (next to the socket, or on an HTTP/2 stream next
/// to the multiplexer), so it sees every write with its completion.
final class WriteStallWatchdog: ChannelOutboundHandler, RemovableChannelHandler {
    typealias OutboundIn = NIOAny
    typealias OutboundOut = NIOAny

    private let timeout: TimeAmount
    private var pendingWrites = 0
    private var lastProgress = NIODeadline.now()
    private var check: Scheduled<Void>?

    init(timeout: TimeAmount) {
        self.timeout = timeout
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if pendingWrites == 0 { lastProgress = .now() }
        pendingWrites += 1
        let written = promise ?? context.eventLoop.makePromise()
        written.futureResult.assumeIsolated().whenComplete { _ in
            self.pendingWrites -= 1
            self.lastProgress = .now()
        }
        context.write(data, promise: written)
        scheduleCheck(context: context, at: lastProgress + timeout)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        check?.cancel()
        check = nil
    }

    /// One timer at a time; it moves itself on while writes keep completing.
    private func scheduleCheck(context: ChannelHandlerContext, at deadline: NIODeadline) {
        guard check == nil else { return }
        check = context.eventLoop.assumeIsolated().scheduleTask(deadline: deadline) {
            self.check = nil
            guard self.pendingWrites > 0, context.channel.isActive else { return }
            let stalledUntil = self.lastProgress + self.timeout
            if stalledUntil <= .now() {
                context.close(promise: nil)
            } else {
                self.scheduleCheck(context: context, at: stalledUntil)
            }
        }
    }
}

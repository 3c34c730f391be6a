//! The scheduler's bucket indexes: a min-queue that costs a `VecDeque`'s push and pop
//! while pushes come in order, and a binary heap's otherwise.
//!
//! A bucket is filed under the instant it frees (`waiting`: a grant's instant plus
//! the interval, and grants are made in time order) or under its head's place in line
//! (`ready`: buckets freed together are filed in the order their heads asked). So
//! nearly every push is no smaller than the one before; a binary heap would still
//! pay `log n` comparisons for each push and pop, and in a big bot's start-up those
//! are about a quarter of the scheduler's work per grant (`benches/compare`'s core
//! scheduler table).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

/// A min-queue: [`pop`](Self::pop) yields exactly what a `BinaryHeap<Reverse<T>>`
/// given the same pushes would.
#[derive(Clone, Debug)]
pub(crate) struct MinQueue<T> {
    /// The pushes not smaller than the one before them (at the time): sorted, least
    /// first.
    run: VecDeque<T>,
    /// The other pushes.
    rest: BinaryHeap<Reverse<T>>,
}

impl<T: Ord + Copy> MinQueue<T> {
    pub(crate) fn new() -> Self {
        Self {
            run: VecDeque::new(),
            rest: BinaryHeap::new(),
        }
    }

    #[inline(always)]
    pub(crate) fn push(&mut self, item: T) {
        match self.run.back() {
            // Keeps `run` sorted.
            Some(&last) if item < last => self.rest.push(Reverse(item)),
            _ => self.run.push_back(item),
        }
    }

    /// The least item.
    #[inline]
    pub(crate) fn peek(&self) -> Option<T> {
        match (self.run.front(), self.rest.peek()) {
            (Some(&run), Some(&Reverse(rest))) => Some(run.min(rest)),
            (run, rest) => run.copied().or(rest.map(|&Reverse(rest)| rest)),
        }
    }

    /// Takes the least item.
    #[inline]
    pub(crate) fn pop(&mut self) -> Option<T> {
        self.pop_if(|_| true)
    }

    /// Takes the least item if `due` says so of it: a [`peek`](Self::peek) and a
    /// [`pop`](Self::pop) that look at the two fronts once.
    #[inline]
    pub(crate) fn pop_if(&mut self, due: impl FnOnce(&T) -> bool) -> Option<T> {
        let from_rest = match (self.run.front(), self.rest.peek()) {
            (Some(run), Some(Reverse(rest))) => rest < run,
            (None, _) => true,
            (Some(_), None) => false,
        };
        if from_rest {
            let Reverse(least) = self.rest.peek()?;
            if !due(least) {
                return None;
            }
            self.rest.pop().map(|Reverse(item)| item)
        } else {
            let least = self.run.front()?;
            if !due(least) {
                return None;
            }
            self.run.pop_front()
        }
    }

    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.run.len() + self.rest.len()
    }

    /// Keeps the items `keep` says to (`run` stays sorted: a subsequence of a sorted
    /// sequence is sorted).
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        self.run.retain(|item| keep(item));
        self.rest.retain(|Reverse(item)| keep(item));
    }

    pub(crate) fn clear(&mut self) {
        self.run.clear();
        self.rest.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        Push(u8),
        Pop,
        /// Pops the least item if it is at most this.
        PopIf(u8),
        /// Keeps the items whose value has this bit clear.
        Retain(u8),
        Clear,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => any::<u8>().prop_map(Op::Push),
            4 => Just(Op::Pop),
            2 => any::<u8>().prop_map(Op::PopIf),
            1 => (0..8u8).prop_map(Op::Retain),
            1 => Just(Op::Clear),
        ]
    }

    proptest! {
        /// Any mix of operations: the same answers as a binary heap, at every step.
        #[test]
        fn pops_what_a_binary_heap_pops(ops in proptest::collection::vec(op(), 0..200)) {
            let mut queue = MinQueue::new();
            let mut heap = BinaryHeap::new();
            for op in ops {
                match op {
                    Op::Push(item) => {
                        queue.push(item);
                        heap.push(Reverse(item));
                    }
                    Op::Pop => prop_assert_eq!(queue.pop(), heap.pop().map(|Reverse(i)| i)),
                    Op::PopIf(limit) => {
                        let due = heap.peek().is_some_and(|&Reverse(least)| least <= limit);
                        let expected = if due { heap.pop().map(|Reverse(i)| i) } else { None };
                        prop_assert_eq!(queue.pop_if(|&least| least <= limit), expected);
                    }
                    Op::Retain(bit) => {
                        queue.retain(|item| item & (1 << bit) == 0);
                        heap.retain(|Reverse(item)| item & (1 << bit) == 0);
                    }
                    Op::Clear => {
                        queue.clear();
                        heap.clear();
                    }
                }
                prop_assert_eq!(queue.len(), heap.len());
                prop_assert_eq!(queue.peek(), heap.peek().map(|&Reverse(i)| i));
            }
        }
    }

    #[test]
    fn pushes_in_order_stay_out_of_the_heap() {
        let mut queue = MinQueue::new();
        for item in [1, 1, 2, 5, 8] {
            queue.push(item);
        }
        queue.push(3);
        assert_eq!((queue.run.len(), queue.rest.len()), (5, 1));
        let popped: Vec<_> = std::iter::from_fn(|| queue.pop()).collect();
        assert_eq!(popped, [1, 1, 2, 3, 5, 8]);
    }
}

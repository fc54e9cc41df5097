// A small open-addressing hash map for the writer workers' per-frame indexes.
//
// std::unordered_{map,set} allocate one node per entry; a worker inserts
// thousands of entries per frame (payload hashes, blob addresses) and throws
// them away at the next frame, which made malloc/free a top item of the
// worker's profile. This table keeps its arrays between frames (Clear() keeps
// the capacity) and allocates only when it grows.
#ifndef TFDUMP_FLAT_MAP_H_
#define TFDUMP_FLAT_MAP_H_

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

namespace tfdump {

// Key must be copyable and equality-comparable; Hasher returns a size_t that
// FlatMap mixes again (pointers have zero low bits). Linear probing, load
// factor at most 1/2.
template <typename Key, typename Value, typename Hasher>
class FlatMap {
 public:
  // The value for `key`, inserting `value` if absent; second: inserted.
  std::pair<Value*, bool> TryEmplace(const Key& key, const Value& value) {
    if (2 * (size_ + 1) > used_.size()) Grow();
    size_t i = Slot(key);
    while (used_[i]) {
      if (keys_[i] == key) return {&values_[i], false};
      i = (i + 1) & mask_;
    }
    used_[i] = 1;
    keys_[i] = key;
    values_[i] = value;
    ++size_;
    return {&values_[i], true};
  }
  Value* Find(const Key& key) {
    if (size_ == 0) return nullptr;
    for (size_t i = Slot(key); used_[i]; i = (i + 1) & mask_) {
      if (keys_[i] == key) return &values_[i];
    }
    return nullptr;
  }
  bool Contains(const Key& key) const { return const_cast<FlatMap*>(this)->Find(key) != nullptr; }
  size_t size() const { return size_; }
  // Empties the table and keeps its capacity.
  void Clear() {
    if (size_ != 0) std::memset(used_.data(), 0, used_.size());
    size_ = 0;
  }

 private:
  size_t Slot(const Key& key) const {
    uint64_t h = static_cast<uint64_t>(Hasher()(key)) * 0x9E3779B97F4A7C15ull;
    return static_cast<size_t>(h ^ (h >> 29)) & mask_;
  }
  void Grow() {
    const size_t cap = used_.empty() ? 64 : 2 * used_.size();
    std::vector<Key> keys(cap);
    std::vector<Value> values(cap);
    std::vector<uint8_t> used(cap, 0);
    keys_.swap(keys);
    values_.swap(values);
    used_.swap(used);
    mask_ = cap - 1;
    size_ = 0;
    for (size_t i = 0; i < used.size(); ++i) {
      if (used[i]) TryEmplace(keys[i], values[i]);
    }
  }

  std::vector<Key> keys_;
  std::vector<Value> values_;
  std::vector<uint8_t> used_;
  size_t size_ = 0, mask_ = 0;
};

// A set: a map whose values are not used.
template <typename Key, typename Hasher>
class FlatSet {
 public:
  bool Insert(const Key& key) { return map_.TryEmplace(key, 0).second; }
  bool Contains(const Key& key) const { return map_.Contains(key); }
  size_t size() const { return map_.size(); }
  void Clear() { map_.Clear(); }

 private:
  FlatMap<Key, uint8_t, Hasher> map_;
};

}  // namespace tfdump

#endif  // TFDUMP_FLAT_MAP_H_
